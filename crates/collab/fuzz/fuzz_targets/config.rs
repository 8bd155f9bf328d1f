//! Arbitrary text into the tree-config reader (`TreeConfig::from_toml`): errors are fine,
//! panics are bugs, and a config it accepts must pass validation.

#![no_main]

use collab::tree::TreeConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match TreeConfig::from_toml(text) {
        Ok(config) => {
            if let Err(e) = config.check() {
                panic!("accepted a config that does not validate: {e}");
            }
        }
        Err(e) => {
            // The message renders (and is not empty).
            assert!(!e.to_string().is_empty());
        }
    }
});
