//! One module per subcommand: its options (a clap `Args` struct, or a `Subcommand` enum for
//! `bench`) and what it does with them.

pub mod bench;
pub mod eval;
pub mod export;
pub mod import;
pub mod info;
pub mod inspect;
pub mod stage;
pub mod train;
pub mod tree;
