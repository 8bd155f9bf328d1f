//! Strict reading of deployment-tree configs (`configs/*.toml`, [`TreeConfig::from_toml`]).
//!
//! serde on its own skips keys it does not know (and `StageSpec` flattens `Scheme`, which rules
//! out `deny_unknown_fields`), so a typo such as `learnin_rate` used to fall back to the default
//! without a word. Here the text is first read into a tree of keys with their positions; every
//! key is checked against the keys the types really read (per table, and per `kind` for a
//! `[[stage]]`), every value against its type and range, and only then is the text deserialized
//! and [validated](validate). Each error names the key, its line, its table and the nearest
//! valid key.
//!
//! The key lists are not written by hand: they are derived from the types. A [`TreeConfig`] with
//! every setting given (one stage of each [`Scheme`]) is serialized, and the keys that come out
//! are the valid ones, with their types; a key is required when deserialization fails without
//! it. The valid ranges are one table, [`RANGES`], applied both to the text (with lines) and to
//! a [`TreeConfig`] built in code ([`validate`]).

use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use crate::CollabError;
use crate::tree::{FineTune, Scheme, StageSpec, Targets, TreeConfig};

/// The key that selects a stage's scheme (the serde tag of [`Scheme`]).
const KIND: &str = "kind";
/// The name of the root node; no stage may take it.
pub const ROOT: &str = "baseline";
/// The longest stage name, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// A tree config that cannot be used: what is wrong, where, and how to fix it.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfigError {
    /// Line (1-based) of the key, value or table header at fault, when the config came from text
    /// and the place is known.
    pub line: Option<usize>,
    /// The setting at fault as a dotted path (`finetune.learning_rate`, `stage.sparsity`,
    /// `stage.name`), when the error is about one setting.
    pub key: Option<String>,
    /// What is wrong and how to fix it: the table, the value, the valid range or keys.
    pub message: String,
    place: Option<Place>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "line {line}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// A table of the config.
#[derive(Clone, Debug, PartialEq)]
enum Table {
    /// The keys above the first `[table]` header.
    Root,
    /// A `[name]` table (`finetune`, `targets`).
    Named(String),
    /// The `index`-th (0-based) `[[stage]]`, with its name when it has one.
    Stage { index: usize, name: Option<String> },
}

impl Table {
    /// The table in [`RANGES`] and in dotted key paths (`""` for the top level).
    fn label(&self) -> &str {
        match self {
            Table::Root => "",
            Table::Named(name) => name,
            Table::Stage { .. } => schema().stage.as_str(),
        }
    }

    /// `key` as a dotted path (`finetune.epochs`).
    fn path(&self, key: &str) -> String {
        match self.label() {
            "" => key.to_string(),
            table => format!("{table}.{key}"),
        }
    }

    /// "the top level", "[finetune]", "[[stage]] #2 (`pruned`)".
    fn title(&self) -> String {
        match self {
            Table::Root => "the top level".into(),
            Table::Named(name) => format!("[{name}]"),
            Table::Stage { index, name } => {
                let stage = &schema().stage;
                match name {
                    Some(name) => format!("[[{stage}]] #{} (`{}`)", index + 1, quote(name)),
                    None => format!("[[{stage}]] #{}", index + 1),
                }
            }
        }
    }

    /// "at the top level", "in [finetune]", "in [[stage]] #2 (`pruned`)".
    fn describe(&self) -> String {
        match self {
            Table::Root => "at the top level".into(),
            _ => format!("in {}", self.title()),
        }
    }
}

/// Where an error is: a table, and a key in it (none: the table itself).
#[derive(Clone, Debug, PartialEq)]
struct Place {
    table: Table,
    key: Option<String>,
}

fn error(table: Table, key: Option<&str>, message: String) -> ConfigError {
    ConfigError {
        line: None,
        key: key.map(|k| table.path(k)),
        message,
        place: Some(Place {
            table,
            key: key.map(str::to_string),
        }),
    }
}

/// A name as it may be shown between backticks (control characters escaped).
fn quote(name: &str) -> String {
    name.escape_debug().to_string()
}

// ------------------------------------------------------------------------------------------
// Ranges
// ------------------------------------------------------------------------------------------

/// The valid values of a numeric setting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// A whole number in `min..=max`.
    Count {
        /// Smallest valid value.
        min: u64,
        /// Largest valid value.
        max: u64,
    },
    /// A finite number between `min` and `max` (an infinite `max`: no upper bound), each end
    /// included when its flag says so.
    Real {
        /// Lower end.
        min: f64,
        /// Whether `min` itself is valid.
        min_included: bool,
        /// Upper end (`f64::INFINITY`: none).
        max: f64,
        /// Whether `max` itself is valid.
        max_included: bool,
    },
}

const fn count(min: u64, max: u64) -> Bound {
    Bound::Count { min, max }
}

/// A finite number above `min` (or at it, when `included`), with no upper bound.
const fn above(min: f64, included: bool) -> Bound {
    Bound::Real {
        min,
        min_included: included,
        max: f64::INFINITY,
        max_included: false,
    }
}

/// The range of every numeric setting: `(table, key, bound)`, the table as in the TOML (`""`
/// for the top level, `stage` for every `[[stage]]`). A test checks that this list and the keys
/// derived from the types name the same numeric settings.
pub const RANGES: &[(&str, &str, Bound)] = &[
    (
        "",
        "width",
        Bound::Real {
            min: 0.0,
            min_included: false,
            max: 4.0,
            max_included: true,
        },
    ),
    ("", "baseline_epochs", count(0, 10_000)),
    ("", "seed", count(0, u64::MAX)),
    ("", "calibration_samples", count(1, 1_000_000)),
    ("", "synthetic_train", count(1, 1_000_000)),
    ("", "synthetic_val", count(1, 1_000_000)),
    ("finetune", "epochs", count(1, 10_000)),
    ("finetune", "batch_size", count(1, 100_000)),
    ("finetune", "devices", count(1, 1_024)),
    ("finetune", "learning_rate", above(0.0, false)),
    ("targets", "max_bytes", count(0, u64::MAX)),
    ("targets", "max_gzip", count(0, u64::MAX)),
    ("targets", "max_accuracy_drop", above(0.0, true)),
    ("targets", "max_latency_ms", above(0.0, false)),
    ("targets", "max_npu_ms", above(0.0, false)),
    ("targets", "max_flash_bytes", count(0, u64::MAX)),
    ("targets", "max_arena_bytes", count(0, u64::MAX)),
    ("", "latency_seconds", above(0.0, false)),
    (
        "stage",
        "sparsity",
        Bound::Real {
            min: 0.0,
            min_included: true,
            max: 1.0,
            max_included: false,
        },
    ),
    ("stage", "end_step", count(1, u64::MAX)),
    ("stage", "frequency", count(1, u64::MAX)),
    ("stage", "power", above(0.0, false)),
    // int8 holds 256 values: more clusters cannot be told apart.
    ("stage", "clusters", count(2, 256)),
];

/// The bound of `key` in `table` (as in [`RANGES`]).
pub fn bound(table: &str, key: &str) -> Option<Bound> {
    RANGES
        .iter()
        .find(|(t, k, _)| *t == table && *k == key)
        .map(|(_, _, b)| *b)
}

impl Bound {
    /// Whether `value` is valid.
    pub fn contains(&self, value: f64) -> bool {
        match *self {
            Bound::Count { min, max } => {
                value.fract() == 0.0 && value >= min as f64 && value <= max as f64
            }
            Bound::Real {
                min,
                min_included,
                max,
                max_included,
            } => {
                value.is_finite()
                    && (value > min || (min_included && value == min))
                    && (value < max || (max_included && value == max))
            }
        }
    }

    /// Whether the whole number `value` is valid.
    fn contains_int(&self, value: i128) -> bool {
        match *self {
            Bound::Count { min, max } => value >= min as i128 && value <= max as i128,
            Bound::Real { .. } => self.contains(value as f64),
        }
    }

    fn is_count(&self) -> bool {
        matches!(self, Bound::Count { .. })
    }
}

impl fmt::Display for Bound {
    /// "a whole number in 1..=10000", "a whole number >= 1", "a finite number in [0, 1)",
    /// "a finite number > 0".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Bound::Count { min, max: u64::MAX } => write!(f, "a whole number >= {min}"),
            Bound::Count { min, max } => write!(f, "a whole number in {min}..={max}"),
            Bound::Real {
                min,
                min_included,
                max,
                max_included: _,
            } if max.is_infinite() => {
                write!(
                    f,
                    "a finite number {} {min}",
                    if min_included { ">=" } else { ">" }
                )
            }
            Bound::Real {
                min,
                min_included,
                max,
                max_included,
            } => write!(
                f,
                "a finite number in {}{min}, {max}{}",
                if min_included { "[" } else { "(" },
                if max_included { "]" } else { ")" }
            ),
        }
    }
}

/// `key` = `value` out of its range.
fn out_of_range(table: &Table, key: &str, value: impl fmt::Display, bound: Bound) -> String {
    format!(
        "`{key}` = {value} {} is out of range: it must be {bound}",
        table.describe()
    )
}

// ------------------------------------------------------------------------------------------
// The keys, derived from the types
// ------------------------------------------------------------------------------------------

/// What a key's value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    Str,
    Int,
    Float,
    Bool,
    Datetime,
    List,
    Table,
    Tables,
}

impl Shape {
    fn of(value: &toml::Value) -> Shape {
        match value {
            toml::Value::String(_) => Shape::Str,
            toml::Value::Integer(_) => Shape::Int,
            toml::Value::Float(_) => Shape::Float,
            toml::Value::Boolean(_) => Shape::Bool,
            toml::Value::Datetime(_) => Shape::Datetime,
            toml::Value::Array(items)
                if !items.is_empty() && items.iter().all(|v| v.is_table()) =>
            {
                Shape::Tables
            }
            toml::Value::Array(_) => Shape::List,
            toml::Value::Table(_) => Shape::Table,
        }
    }

    /// What a value of this shape is, for "must be …".
    fn describe(self) -> &'static str {
        match self {
            Shape::Str => "a string in quotes",
            Shape::Int => "a whole number",
            Shape::Float => "a number",
            Shape::Bool => "true or false",
            Shape::Datetime => "a date",
            Shape::List => "a list `[…]`",
            Shape::Table => "a table",
            Shape::Tables => "a list of tables",
        }
    }
}

/// A valid key.
#[derive(Clone, Debug)]
struct Key {
    name: String,
    shape: Shape,
    required: bool,
}

fn find<'a>(keys: &'a [Key], name: &str) -> Option<&'a Key> {
    keys.iter().find(|k| k.name == name)
}

fn names(keys: &[Key]) -> String {
    keys.iter()
        .map(|k| format!("`{}`", k.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every valid key, per table and per stage kind.
#[derive(Debug)]
struct Schema {
    /// The top-level keys (the tables among them).
    root: Vec<Key>,
    /// The keys of each `[table]`.
    tables: Vec<(String, Vec<Key>)>,
    /// The name of the list of stages (`stage`).
    stage: String,
    /// For each `kind`, every key of such a stage (`name`, `parent`, `kind` included).
    kinds: Vec<(String, Vec<Key>)>,
}

/// One scheme of every kind, every optional setting given.
fn every_scheme() -> [Scheme; 3] {
    let all = [
        Scheme::Prune {
            sparsity: 0.5,
            end_step: Some(1),
            frequency: 1,
            power: 1.0,
            skip_depthwise: false,
        },
        Scheme::Cluster {
            clusters: 2,
            per_channel: false,
            preserve_sparsity: false,
            channel_scaled: false,
        },
        Scheme::Qat,
    ];
    // A new kind must be listed above: this match stops compiling until it is listed here too.
    for scheme in &all {
        match scheme {
            Scheme::Prune { .. } | Scheme::Cluster { .. } | Scheme::Qat => {}
        }
    }
    all
}

/// A valid tree config with every setting given: the source of the key lists.
fn full_example() -> TreeConfig {
    TreeConfig {
        model: "ds-cnn-s".into(),
        input: Some(crate::network::InputRecord {
            pixels: Some(crate::network::Pixels::Raw),
            mfcc: Some(collab_data::MfccKind::TfSignal),
            labels: vec!["a".into()],
        }),
        width: 1.0,
        weights: Some("weights.safetensors".into()),
        checkpoint: Some("checkpoint".into()),
        baseline_epochs: 1,
        augment: true,
        seed: 0,
        finetune: FineTune {
            epochs: 1,
            devices: 1,
            batch_size: 1,
            learning_rate: 1e-4,
        },
        calibration_samples: 1,
        synthetic_train: Some(1),
        synthetic_val: Some(1),
        stages: every_scheme()
            .into_iter()
            .enumerate()
            .map(|(i, scheme)| StageSpec {
                name: format!("s{i}"),
                parent: ROOT.into(),
                scheme,
            })
            .collect(),
        targets: Targets {
            max_bytes: Some(1),
            max_gzip: Some(1),
            max_accuracy_drop: Some(1.0),
            max_latency_ms: Some(1.0),
            max_npu_ms: Some(1.0),
            max_flash_bytes: Some(1),
            max_arena_bytes: Some(1),
        },
        plot_layer: Some("conv1".into()),
        npu: Some("ethos-u55-128".into()),
        latency_seconds: Some(1.0),
    }
}

/// Every key a tree config takes, as the Markdown of `docs/CONFIG.md`: per table (the top
/// level, each `[table]`, and `[[stage]]` per `kind`), each key with its TOML type, whether it
/// is required and its valid values. Derived from the types and [`RANGES`], the one home of
/// both; a test keeps `docs/CONFIG.md` equal to it.
pub fn reference() -> String {
    let s = schema();
    let mut out = String::from(
        "# Tree config keys\n\n\
         Generated from the config types and their ranges (`collab::config::reference`); a test \
         fails when this file and the code disagree. Rewrite it with\n\
         `COLLAB_WRITE_CONFIG_DOC=1 cargo test -p collab --lib config_reference`.\n\
         What each key means: the field docs of `collab::tree::{TreeConfig, FineTune, Targets, \
         StageSpec, Scheme}`; a full example: `configs/dscnn_l_recipe.toml`.\n",
    );
    let mut section = |title: &str, table: &str, keys: &[Key]| {
        out.push_str(&format!(
            "\n## {title}\n\n| key | type | required | valid values |\n|---|---|---|---|\n"
        ));
        let mut keys: Vec<&Key> = keys
            .iter()
            .filter(|k| !matches!(k.shape, Shape::Table | Shape::Tables))
            .collect();
        keys.sort_by(|a, b| (!a.required, &a.name).cmp(&(!b.required, &b.name)));
        for k in keys {
            let range = bound(table, &k.name).map_or_else(String::new, |b| b.to_string());
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                k.name,
                k.shape.describe(),
                if k.required { "yes" } else { "no" },
                range
            ));
        }
    };
    section("Top level", "", &s.root);
    for (table, keys) in &s.tables {
        section(&format!("`[{table}]`"), table, keys);
    }
    for (kind, keys) in &s.kinds {
        section(
            &format!("`[[{}]]` with `kind = \"{kind}\"`", s.stage),
            &s.stage,
            keys,
        );
    }
    out
}

fn schema() -> &'static Schema {
    static SCHEMA: OnceLock<Schema> = OnceLock::new();
    SCHEMA.get_or_init(Schema::derive)
}

impl Schema {
    fn derive() -> Schema {
        let Ok(toml::Value::Table(sample)) = toml::Value::try_from(full_example()) else {
            unreachable!("a TreeConfig serializes to a TOML table")
        };
        // Required: deserialization fails without it.
        let required = |remove: &dyn Fn(&mut toml::Table) -> Option<()>| {
            let mut table = sample.clone();
            remove(&mut table);
            toml::Value::Table(table).try_into::<TreeConfig>().is_err()
        };
        let mut schema = Schema {
            root: Vec::new(),
            tables: Vec::new(),
            stage: String::new(),
            kinds: Vec::new(),
        };
        for (name, value) in &sample {
            let shape = Shape::of(value);
            schema.root.push(Key {
                name: name.clone(),
                shape,
                required: required(&|t| t.remove(name).map(drop)),
            });
            match value {
                toml::Value::Table(table) => {
                    let keys = table
                        .iter()
                        .map(|(key, v)| Key {
                            name: key.clone(),
                            shape: Shape::of(v),
                            required: required(&|t| {
                                t.get_mut(name)?.as_table_mut()?.remove(key).map(drop)
                            }),
                        })
                        .collect();
                    schema.tables.push((name.clone(), keys));
                }
                toml::Value::Array(items) if shape == Shape::Tables => {
                    schema.stage = name.clone();
                    for (i, item) in items.iter().enumerate() {
                        let Some(table) = item.as_table() else {
                            continue;
                        };
                        let kind = table.get(KIND).and_then(|k| k.as_str()).unwrap_or_default();
                        let keys = table
                            .iter()
                            .map(|(key, v)| Key {
                                name: key.clone(),
                                shape: Shape::of(v),
                                required: required(&|t| {
                                    t.get_mut(name)?
                                        .as_array_mut()?
                                        .get_mut(i)?
                                        .as_table_mut()?
                                        .remove(key)
                                        .map(drop)
                                }),
                            })
                            .collect();
                        schema.kinds.push((kind.to_string(), keys));
                    }
                }
                _ => {}
            }
        }
        schema
    }

    fn table(&self, name: &str) -> Option<&[Key]> {
        self.tables
            .iter()
            .find(|(t, _)| t == name)
            .map(|(_, k)| k.as_slice())
    }

    fn kind(&self, kind: &str) -> Option<&[Key]> {
        self.kinds
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, k)| k.as_slice())
    }

    /// The kinds, for messages: "`prune`, `cluster`, `qat`".
    fn kind_names(&self) -> String {
        self.kinds
            .iter()
            .map(|(k, _)| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The top-level keys that are not tables.
    fn settings(&self) -> impl Iterator<Item = &Key> {
        self.root
            .iter()
            .filter(|k| !matches!(k.shape, Shape::Table | Shape::Tables))
    }

    /// Where else `key` is valid, as a phrase ("in [finetune]", "in a `prune` [[stage]]"),
    /// with the valid name that matched.
    fn homes(&self) -> Vec<(String, Home)> {
        let mut homes: Vec<(String, Home)> = self
            .settings()
            .map(|k| (k.name.clone(), Home::Root))
            .collect();
        for (table, keys) in &self.tables {
            homes.extend(
                keys.iter()
                    .map(|k| (k.name.clone(), Home::Table(table.clone()))),
            );
        }
        for (kind, keys) in &self.kinds {
            homes.extend(
                keys.iter()
                    .map(|k| (k.name.clone(), Home::Kind(kind.clone()))),
            );
        }
        homes
    }
}

/// Where a key belongs.
#[derive(Clone, Debug, PartialEq)]
enum Home {
    Root,
    Table(String),
    Kind(String),
}

impl Home {
    /// How to move a key there ("": say nothing more).
    fn how(&self) -> String {
        match self {
            Home::Root => "; move it above the first [table] header".into(),
            Home::Table(t) => format!("; move it below the `[{t}]` header"),
            Home::Kind(_) => String::new(),
        }
    }

    fn describe(&self) -> String {
        match self {
            Home::Root => "at the top level".into(),
            Home::Table(t) => format!("in [{t}]"),
            Home::Kind(k) => format!("in a `{k}` [[{}]]", schema().stage),
        }
    }
}

// ------------------------------------------------------------------------------------------
// Nearest names
// ------------------------------------------------------------------------------------------

/// Edit distance with adjacent transpositions (optimal string alignment), on characters.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// The candidate closest to `name` when it is close enough to be a typo of it (case and `-`
/// for `_` are free; then up to one edit in three characters, at least one).
fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if name.chars().count() > 4 * MAX_NAME_LEN {
        return None;
    }
    let normal = name.to_ascii_lowercase().replace('-', "_");
    let limit = (normal.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(&normal, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

// ------------------------------------------------------------------------------------------
// The text as a tree of keys with their positions
// ------------------------------------------------------------------------------------------

/// A TOML value, with the position of every key and of every array item.
#[derive(Debug)]
enum Node {
    Table(Vec<(Spanned<String>, Node)>),
    Array(Vec<Spanned<Node>>),
    Str(String),
    Int(i64),
    Float(f64),
    Bool,
    Datetime,
}

impl Node {
    fn shape_matches(&self, shape: Shape) -> bool {
        match (shape, self) {
            (Shape::Str, Node::Str(_))
            | (Shape::Int, Node::Int(_))
            | (Shape::Float, Node::Int(_) | Node::Float(_))
            | (Shape::Bool, Node::Bool)
            | (Shape::Datetime, Node::Datetime)
            | (Shape::List, Node::Array(_))
            | (Shape::Table, Node::Table(_)) => true,
            (Shape::Tables, Node::Array(items)) => {
                items.iter().all(|i| matches!(i.get_ref(), Node::Table(_)))
            }
            _ => false,
        }
    }

    /// What it is, for "…, not …".
    fn describe(&self) -> &'static str {
        match self {
            Node::Table(_) => "a table",
            Node::Array(_) => "a list",
            Node::Str(_) => "a string",
            Node::Int(_) => "a whole number",
            Node::Float(_) => "a number with a fraction or exponent",
            Node::Bool => "a boolean",
            Node::Datetime => "a date",
        }
    }

    fn is_tables(&self) -> bool {
        matches!(self, Node::Array(items)
            if !items.is_empty() && items.iter().all(|i| matches!(i.get_ref(), Node::Table(_))))
    }

    fn get<'a>(
        entries: &'a [(Spanned<String>, Node)],
        key: &str,
    ) -> Option<&'a (Spanned<String>, Node)> {
        entries.iter().find(|(k, _)| k.get_ref() == key)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Bool)
    }
    fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
        Ok(i64::try_from(v).map_or(Node::Float(v as f64), Node::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        loop {
            match map.next_key::<Spanned<String>>() {
                Ok(Some(key)) => {
                    let value = map.next_value::<Node>()?;
                    entries.push((key, value));
                }
                Ok(None) => return Ok(Node::Table(entries)),
                // toml hands a date over as a one-entry map whose key is no spanned string.
                Err(e) if entries.is_empty() => {
                    return match map.next_value::<String>() {
                        Ok(_) => Ok(Node::Datetime),
                        Err(_) => Err(e),
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Node, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Byte offset → line.
struct Lines(Vec<usize>);

impl Lines {
    fn new(text: &str) -> Self {
        Lines(
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect(),
        )
    }

    /// 1-based line of `offset`.
    fn line(&self, offset: usize) -> usize {
        self.0.partition_point(|start| *start <= offset).max(1)
    }

    fn of(&self, span: Option<Range<usize>>) -> Option<usize> {
        span.map(|s| self.line(s.start))
    }
}

// ------------------------------------------------------------------------------------------
// Checking the keys and values of the text
// ------------------------------------------------------------------------------------------

struct Checker<'a> {
    lines: &'a Lines,
    errors: Vec<ConfigError>,
}

impl Checker<'_> {
    fn push(
        &mut self,
        span: Option<Range<usize>>,
        table: Table,
        key: Option<&str>,
        message: String,
    ) {
        let mut e = error(table, key, message);
        e.line = self.lines.of(span);
        self.errors.push(e);
    }

    fn root(&mut self, entries: &[(Spanned<String>, Node)]) {
        let schema = schema();
        for (key, value) in entries {
            let name = key.get_ref().as_str();
            match find(&schema.root, name) {
                Some(spec) if spec.shape == Shape::Table && matches!(value, Node::Table(_)) => {
                    let Node::Table(inner) = value else { continue };
                    self.table(name, key.span(), inner);
                }
                Some(spec) if spec.shape == Shape::Tables && matches!(value, Node::Table(_)) => {
                    self.push(
                        Some(key.span()),
                        Table::Root,
                        Some(name),
                        format!(
                            "`[{name}]` must be written `[[{name}]]` (double brackets): each \
                             stage is one `[[{name}]]` table"
                        ),
                    );
                }
                Some(spec) if spec.shape == Shape::Tables && value.shape_matches(Shape::Tables) => {
                    let Node::Array(items) = value else { continue };
                    self.stages(items);
                }
                Some(spec) => self.value(Table::Root, key, spec, value),
                None => self.unknown(Table::Root, key, value, &schema.root, None),
            }
        }
        for spec in schema.root.iter().filter(|k| k.required) {
            if Node::get(entries, &spec.name).is_none() {
                let message = match spec.shape {
                    Shape::Table => format!(
                        "there is no `[{0}]` table: add one (it needs {1})",
                        spec.name,
                        required_names(schema.table(&spec.name).unwrap_or_default())
                    ),
                    _ => format!(
                        "`{}` is missing at the top level: add `{} = …` ({}) above the first \
                         [table] header",
                        spec.name,
                        spec.name,
                        expected(&Table::Root, spec)
                    ),
                };
                self.push(None, Table::Root, Some(&spec.name), message);
            }
        }
    }

    fn table(&mut self, name: &str, header: Range<usize>, entries: &[(Spanned<String>, Node)]) {
        let keys = schema().table(name).unwrap_or_default();
        let table = Table::Named(name.to_string());
        for (key, value) in entries {
            match find(keys, key.get_ref()) {
                Some(spec) => self.value(table.clone(), key, spec, value),
                None => self.unknown(table.clone(), key, value, keys, None),
            }
        }
        for spec in keys.iter().filter(|k| k.required) {
            if Node::get(entries, &spec.name).is_none() {
                let message = format!(
                    "[{name}] has no `{}`: add `{} = …` ({})",
                    spec.name,
                    spec.name,
                    expected(&table, spec)
                );
                self.push(
                    Some(header.clone()),
                    table.clone(),
                    Some(&spec.name),
                    message,
                );
            }
        }
    }

    fn stages(&mut self, items: &[Spanned<Node>]) {
        let schema = schema();
        for (index, item) in items.iter().enumerate() {
            let Node::Table(entries) = item.get_ref() else {
                continue;
            };
            let name = match Node::get(entries, "name") {
                Some((_, Node::Str(n))) => Some(n.clone()),
                _ => None,
            };
            let table = Table::Stage { index, name };
            let header = Some(item.span());
            let kinds = schema.kind_names();
            let (kind, keys) = match Node::get(entries, KIND) {
                None => {
                    self.push(
                        header,
                        table.clone(),
                        Some(KIND),
                        format!(
                            "{} has no `{KIND}`: add `{KIND} = \"…\"` with one of {kinds}",
                            table.title()
                        ),
                    );
                    continue;
                }
                Some((key, Node::Str(kind))) => match schema.kind(kind) {
                    Some(keys) => (kind.as_str(), keys),
                    None => {
                        let hint = nearest(kind, schema.kinds.iter().map(|(k, _)| k.as_str()))
                            .map(|k| format!(" (did you mean `{k}`?)"))
                            .unwrap_or_default();
                        self.push(
                            Some(key.span()),
                            table.clone(),
                            Some(KIND),
                            format!(
                                "unknown {KIND} `{}` {}{hint}. The kinds are {kinds}",
                                quote(kind),
                                table.describe()
                            ),
                        );
                        continue;
                    }
                },
                Some((key, other)) => {
                    self.push(
                        Some(key.span()),
                        table.clone(),
                        Some(KIND),
                        format!(
                            "`{KIND}` {} must be a string in quotes, one of {kinds}, not {}",
                            table.describe(),
                            other.describe()
                        ),
                    );
                    continue;
                }
            };
            for (key, value) in entries {
                match find(keys, key.get_ref()) {
                    Some(spec) => self.value(table.clone(), key, spec, value),
                    None => self.unknown(table.clone(), key, value, keys, Some(kind)),
                }
            }
            for spec in keys.iter().filter(|k| k.required) {
                if Node::get(entries, &spec.name).is_none() {
                    let message = format!(
                        "{} has no `{}`: add `{} = …` ({})",
                        table.title(),
                        spec.name,
                        spec.name,
                        expected(&table, spec)
                    );
                    self.push(header.clone(), table.clone(), Some(&spec.name), message);
                }
            }
        }
    }

    /// A known key: its type, then its range.
    fn value(&mut self, table: Table, key: &Spanned<String>, spec: &Key, value: &Node) {
        let name = key.get_ref().as_str();
        let span = Some(key.span());
        let range = bound(table.label(), name);
        if !value.shape_matches(spec.shape) {
            let message = match (value, range) {
                (Node::Float(f), Some(b)) if b.is_count() => format!(
                    "`{name}` = {f} {} must be {b}: write it without a decimal point or exponent",
                    table.describe()
                ),
                _ => format!(
                    "`{name}` {} must be {}, not {}",
                    table.describe(),
                    expected(&table, spec),
                    value.describe()
                ),
            };
            self.push(span, table, Some(name), message);
            return;
        }
        let Some(b) = range else { return };
        let message = match value {
            Node::Int(i) if !b.contains_int(i128::from(*i)) => out_of_range(&table, name, i, b),
            Node::Float(f) if !b.contains(*f) => out_of_range(&table, name, f, b),
            _ => return,
        };
        self.push(span, table, Some(name), message);
    }

    /// A key that is not valid in `table`, whose valid keys are `here` (a stage's: those of
    /// its `kind`).
    fn unknown(
        &mut self,
        table: Table,
        key: &Spanned<String>,
        value: &Node,
        here: &[Key],
        kind: Option<&str>,
    ) {
        let schema = schema();
        let name = key.get_ref().as_str();
        let span = Some(key.span());
        let shown = quote(name);
        let homes = schema.homes();
        let elsewhere: Vec<&Home> = homes
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, h)| h)
            .collect();
        let message = if let Some(home) = elsewhere.first() {
            // A valid key in the wrong place.
            match (&table, home) {
                (Table::Root, _) => format!(
                    "`{shown}` is not a top-level setting: it belongs {}{}",
                    home.describe(),
                    home.how()
                ),
                (_, Home::Root) => {
                    let header = match &table {
                        Table::Stage { .. } => format!("a `[[{}]]`", schema.stage),
                        _ => format!("the `[{}]`", table.label()),
                    };
                    format!(
                        "`{shown}` is a top-level setting, but it is written below {header} \
                         header, so TOML reads it as a key of that table; move it above the \
                         first [table] header"
                    )
                }
                (Table::Stage { .. }, Home::Kind(_)) => {
                    let kinds: Vec<String> = elsewhere
                        .iter()
                        .filter_map(|h| match h {
                            Home::Kind(k) => Some(format!("`{k}`")),
                            _ => None,
                        })
                        .collect();
                    let kind = kind.unwrap_or_default();
                    format!(
                        "`{shown}` is not a key of a `{kind}` stage ({}) but of {} stages. \
                         Valid keys of a `{kind}` stage: {}",
                        table.title(),
                        kinds.join(" and "),
                        names(here)
                    )
                }
                _ => format!(
                    "`{shown}` is not a key {}: it belongs {}{}",
                    table.describe(),
                    home.describe(),
                    home.how()
                ),
            }
        } else if table == Table::Root && (matches!(value, Node::Table(_)) || value.is_tables()) {
            // An unknown `[table]` or `[[table]]`.
            let (open, close) = if value.is_tables() {
                ("[[", "]]")
            } else {
                ("[", "]")
            };
            let tables: Vec<(&str, Shape)> = schema
                .root
                .iter()
                .filter(|k| matches!(k.shape, Shape::Table | Shape::Tables))
                .map(|k| (k.name.as_str(), k.shape))
                .collect();
            let bracket = |n: &str, s: Shape| match s {
                Shape::Tables => format!("`[[{n}]]`"),
                _ => format!("`[{n}]`"),
            };
            let hint = nearest(name, tables.iter().map(|(n, _)| *n))
                .and_then(|n| tables.iter().find(|(t, _)| *t == n))
                .map(|(n, s)| format!(" (did you mean {}?)", bracket(n, *s)))
                .unwrap_or_default();
            format!(
                "unknown table `{open}{shown}{close}`{hint}. The tables are {}",
                tables
                    .iter()
                    .map(|(n, s)| bracket(n, *s))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            let valid: Vec<&Key> = match table {
                Table::Root => schema.settings().collect(),
                _ => here.iter().collect(),
            };
            let hint = match nearest(name, valid.iter().map(|k| k.name.as_str())) {
                Some(k) => format!(" (did you mean `{k}`?)"),
                None => match nearest(name, homes.iter().map(|(k, _)| k.as_str())) {
                    Some(k) => {
                        let home = homes.iter().find(|(n, _)| n == k).map(|(_, h)| h);
                        format!(
                            " (did you mean `{k}` {}?)",
                            home.map(Home::describe).unwrap_or_default()
                        )
                    }
                    None => String::new(),
                },
            };
            let valid: Vec<Key> = valid.into_iter().cloned().collect();
            format!(
                "unknown key `{shown}` {}{hint}. Valid keys {}: {}",
                table.describe(),
                table.describe(),
                names(&valid)
            )
        };
        self.push(span, table, Some(name), message);
    }
}

/// "`epochs`, `batch_size`" for the required keys.
fn required_names(keys: &[Key]) -> String {
    let required: Vec<Key> = keys.iter().filter(|k| k.required).cloned().collect();
    if required.is_empty() {
        "no key".into()
    } else {
        names(&required)
    }
}

/// What `spec`'s value must be, with its range when it has one.
fn expected(table: &Table, spec: &Key) -> String {
    match bound(table.label(), &spec.name) {
        Some(b) => b.to_string(),
        None => spec.shape.describe().to_string(),
    }
}

// ------------------------------------------------------------------------------------------
// Reading and validating
// ------------------------------------------------------------------------------------------

/// Read a tree config from TOML text: its syntax, every key (known, in its table, of its stage's
/// kind), every value's type and range, then [`validate`]. The first problem in the file is
/// returned, with its line.
pub fn parse(text: &str) -> Result<TreeConfig, ConfigError> {
    let lines = Lines::new(text);
    let doc = toml::from_str::<Node>(text).map_err(|e| toml_error(&e, &lines, true))?;
    let Node::Table(entries) = &doc else {
        return Err(ConfigError {
            line: None,
            key: None,
            message: "not a TOML table".into(),
            place: None,
        });
    };
    let mut checker = Checker {
        lines: &lines,
        errors: Vec::new(),
    };
    checker.root(entries);
    // The first in the file; those without a line (missing top-level keys) last.
    if let Some(first) = checker
        .errors
        .into_iter()
        .min_by_key(|e| e.line.unwrap_or(usize::MAX))
    {
        return Err(first);
    }
    let config: TreeConfig = toml::from_str(text).map_err(|e| toml_error(&e, &lines, false))?;
    validate(&config).map_err(|mut e| {
        e.line = locate(entries, e.place.as_ref(), &lines);
        e
    })?;
    Ok(config)
}

fn toml_error(e: &toml::de::Error, lines: &Lines, syntax: bool) -> ConfigError {
    let message = e.message().trim_end().replace('\n', "; ");
    ConfigError {
        line: lines.of(e.span()),
        key: None,
        message: if syntax {
            format!("not valid TOML: {message}")
        } else {
            message.to_string()
        },
        place: None,
    }
}

/// The line of `place` in the text.
fn locate(root: &[(Spanned<String>, Node)], place: Option<&Place>, lines: &Lines) -> Option<usize> {
    let place = place?;
    let key_in = |entries: &[(Spanned<String>, Node)], fallback: Range<usize>| {
        place
            .key
            .as_deref()
            .and_then(|k| Node::get(entries, k))
            .map_or(fallback, |(k, _)| k.span())
    };
    let span = match &place.table {
        Table::Root => Node::get(root, place.key.as_deref()?)?.0.span(),
        Table::Named(name) => match Node::get(root, name)? {
            (_, Node::Table(entries)) => key_in(entries, Node::get(root, name)?.0.span()),
            (header, _) => header.span(),
        },
        Table::Stage { index, .. } => {
            let (_, Node::Array(items)) = Node::get(root, &schema().stage)? else {
                return None;
            };
            let item = items.get(*index)?;
            match item.get_ref() {
                Node::Table(entries) => key_in(entries, item.span()),
                _ => item.span(),
            }
        }
    };
    Some(lines.line(span.start))
}

/// Why `name` cannot be a stage name ("is empty", "contains `/`"), or `None` when it can: 1 to
/// [`MAX_NAME_LEN`] ASCII letters, digits, `_` or `-`, and not [`ROOT`] in any case (a stage
/// name is a folder under the tree's output folder).
pub fn stage_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("is empty".into());
    }
    if name.eq_ignore_ascii_case(ROOT) {
        return Some(format!("is reserved for the root node `{ROOT}`"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        let shown = match c {
            ' ' => "a space".to_string(),
            c => format!("`{}`", c.escape_debug()),
        };
        return Some(format!("contains {shown}"));
    }
    let n = name.chars().count();
    (n > MAX_NAME_LEN).then(|| format!("has {n} characters"))
}

/// A whole-number setting against its bound in [`RANGES`].
fn whole(table: &Table, key: &str, value: impl TryInto<u64>) -> Result<(), ConfigError> {
    let value = value.try_into().unwrap_or(u64::MAX);
    match bound(table.label(), key) {
        Some(b) if !b.contains_int(i128::from(value)) => Err(error(
            table.clone(),
            Some(key),
            out_of_range(table, key, value, b),
        )),
        _ => Ok(()),
    }
}

/// A real-number setting against its bound in [`RANGES`].
fn real(table: &Table, key: &str, value: f64) -> Result<(), ConfigError> {
    match bound(table.label(), key) {
        Some(b) if !b.contains(value) => Err(error(
            table.clone(),
            Some(key),
            out_of_range(table, key, value, b),
        )),
        _ => Ok(()),
    }
}

/// Check a config however it was built (from text, or in code by the `collab` commands): every
/// number in its range ([`RANGES`]), stage names usable as folder names, unique (also when case
/// is ignored) and not [`ROOT`], every parent defined above its stage.
pub fn validate(config: &TreeConfig) -> Result<(), ConfigError> {
    // Every field named: a new one does not compile until it is considered here.
    let TreeConfig {
        model: _,
        width,
        weights: _,
        checkpoint: _,
        baseline_epochs,
        augment: _,
        seed,
        finetune,
        calibration_samples,
        synthetic_train,
        synthetic_val,
        stages,
        targets,
        plot_layer: _,
        npu,
        latency_seconds,
        // Checked against the imported file (labels vs outputs) by `InputRecord::apply`.
        input: _,
    } = config;
    let root = Table::Root;
    real(&root, "width", *width)?;
    whole(&root, "baseline_epochs", *baseline_epochs)?;
    whole(&root, "seed", *seed)?;
    whole(&root, "calibration_samples", *calibration_samples)?;
    if let Some(n) = synthetic_train {
        whole(&root, "synthetic_train", *n)?;
    }
    if let Some(n) = synthetic_val {
        whole(&root, "synthetic_val", *n)?;
    }
    if let Some(t) = latency_seconds {
        real(&root, "latency_seconds", *t)?;
    }
    if let Some(n) = npu
        .as_deref()
        .filter(|n| !collab_tflite::tools::NPUS.contains(n))
    {
        return Err(error(
            root.clone(),
            Some("npu"),
            format!(
                "`{n}` is not an Ethos-U configuration Vela knows; use one of {}",
                collab_tflite::tools::NPUS.join(", ")
            ),
        ));
    }
    let FineTune {
        epochs,
        batch_size,
        devices,
        learning_rate,
    } = finetune;
    let table = Table::Named("finetune".into());
    whole(&table, "epochs", *epochs)?;
    whole(&table, "batch_size", *batch_size)?;
    whole(&table, "devices", *devices)?;
    real(&table, "learning_rate", *learning_rate)?;
    let Targets {
        max_bytes,
        max_gzip,
        max_accuracy_drop,
        max_latency_ms,
        max_npu_ms,
        max_flash_bytes,
        max_arena_bytes,
    } = targets;
    let table = Table::Named("targets".into());
    if let Some(n) = max_bytes {
        whole(&table, "max_bytes", *n)?;
    }
    if let Some(n) = max_gzip {
        whole(&table, "max_gzip", *n)?;
    }
    if let Some(d) = max_accuracy_drop {
        real(&table, "max_accuracy_drop", *d)?;
    }
    for (key, v) in [
        ("max_latency_ms", max_latency_ms),
        ("max_npu_ms", max_npu_ms),
    ] {
        if let Some(v) = v {
            real(&table, key, *v)?;
        }
    }
    for (key, v) in [
        ("max_flash_bytes", max_flash_bytes),
        ("max_arena_bytes", max_arena_bytes),
    ] {
        if let Some(v) = v {
            whole(&table, key, *v)?;
        }
    }

    let stage_table = &schema().stage;
    let mut known: Vec<&str> = vec![ROOT];
    for (index, stage) in stages.iter().enumerate() {
        let StageSpec {
            name,
            parent,
            scheme,
        } = stage;
        let number = index + 1;
        if let Some(problem) = stage_name_problem(name) {
            return Err(error(
                Table::Stage { index, name: None },
                Some("name"),
                format!(
                    "[[{stage_table}]] #{number}: the name {name:?} cannot be used, it \
                     {problem}: a stage name becomes a folder under --out, so it must be 1 to \
                     {MAX_NAME_LEN} ASCII letters, digits, `_` or `-` (such as `pruned_50`), \
                     and not `{ROOT}`"
                ),
            ));
        }
        if let Some(other) = known[1..].iter().position(|k| k.eq_ignore_ascii_case(name)) {
            let same = known[other + 1] == name;
            return Err(error(
                Table::Stage { index, name: None },
                Some("name"),
                format!(
                    "[[{stage_table}]] #{number}: the name `{name}` {} [[{stage_table}]] #{}: \
                     every stage needs its own name (it is its folder{}); rename one",
                    if same {
                        "is already used by".to_string()
                    } else {
                        format!("differs only in case from `{}` of", known[other + 1])
                    },
                    other + 1,
                    if same {
                        ""
                    } else {
                        ", and case-insensitive file systems treat both as one"
                    }
                ),
            ));
        }
        let table = Table::Stage {
            index,
            name: Some(name.clone()),
        };
        if !known.contains(&parent.as_str()) {
            let hint = nearest(parent, known.iter().copied())
                .map(|k| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            return Err(error(
                table,
                Some("parent"),
                format!(
                    "[[{stage_table}]] #{number} (`{name}`) starts from `{}`, which is neither \
                     `{ROOT}` nor a stage defined above it{hint}",
                    quote(parent)
                ),
            ));
        }
        match scheme {
            Scheme::Prune {
                sparsity,
                end_step,
                frequency,
                power,
                skip_depthwise: _,
            } => {
                real(&table, "sparsity", *sparsity)?;
                if let Some(step) = end_step {
                    whole(&table, "end_step", *step)?;
                }
                whole(&table, "frequency", *frequency)?;
                real(&table, "power", *power)?;
            }
            Scheme::Cluster {
                clusters,
                per_channel,
                preserve_sparsity,
                channel_scaled,
            } => {
                whole(&table, "clusters", *clusters)?;
                if *channel_scaled && *per_channel {
                    return Err(error(
                        table,
                        Some("channel_scaled"),
                        format!(
                            "[[{stage_table}]] #{number} (`{name}`): per_channel and \
                             channel_scaled are exclusive; choose one (channel_scaled shares one \
                             codebook across channels, per_channel gives each its own)"
                        ),
                    ));
                }
                let fixed = 2 + usize::from(*preserve_sparsity);
                if *channel_scaled && *clusters <= fixed {
                    return Err(error(
                        table,
                        Some("clusters"),
                        format!(
                            "[[{stage_table}]] #{number} (`{name}`): channel_scaled needs \
                             clusters >= {} (−1 and +1{} are fixed); got {clusters}",
                            fixed + 1,
                            if *preserve_sparsity {
                                " and the zero"
                            } else {
                                ""
                            }
                        ),
                    ));
                }
            }
            Scheme::Qat => {}
        }
        known.push(name);
    }
    Ok(())
}

impl TreeConfig {
    /// Read a TOML file ([`TreeConfig::from_toml`]); relative `weights` paths are taken from
    /// the working directory. Errors name the file, the line, the key and how to fix it.
    pub fn open(path: &Path) -> Result<Self, CollabError> {
        let text = std::fs::read_to_string(path).map_err(|e| CollabError::checkpoint(path, e))?;
        Self::from_toml(&text).map_err(|e| CollabError::checkpoint(path, e))
    }

    /// Read a config from TOML text, strictly: an unknown or misplaced key, a value of the
    /// wrong type or out of its range is an error naming its line, key and table and the
    /// nearest valid key ([`crate::config`]); then [`TreeConfig::check`].
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        parse(text)
    }

    /// Every number in its range ([`crate::config::RANGES`]), stage names usable as folder
    /// names (1 to 64 ASCII letters, digits, `_`, `-`; not `baseline`) and unique, parents
    /// defined above their stage. For a config built in code (no lines).
    pub fn check(&self) -> Result<(), ConfigError> {
        validate(self)
    }

    /// [`TreeConfig::check`] with the error as text.
    pub fn validate(&self) -> Result<(), String> {
        self.check().map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/CONFIG.md` is [`reference`]: written anew with `COLLAB_WRITE_CONFIG_DOC=1`.
    #[test]
    fn config_reference_is_docs_config_md() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/CONFIG.md");
        let text = reference();
        if std::env::var_os("COLLAB_WRITE_CONFIG_DOC").is_some() {
            std::fs::write(&path, &text).unwrap();
        }
        let doc = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            doc == text,
            "docs/CONFIG.md differs from collab::config::reference(); rewrite it with \
             COLLAB_WRITE_CONFIG_DOC=1 cargo test -p collab --lib config_reference"
        );
        for key in ["devices", "sparsity", "clusters", "max_npu_ms", "model"] {
            assert!(text.contains(&format!("| `{key}` |")), "{key} missing");
        }
    }

    #[test]
    fn keys_are_derived_from_the_types() {
        let s = schema();
        assert_eq!(s.stage, "stage");
        let required = |keys: &[Key]| -> Vec<String> {
            keys.iter()
                .filter(|k| k.required)
                .map(|k| k.name.clone())
                .collect()
        };
        assert_eq!(required(&s.root), ["finetune", "model"]);
        assert_eq!(required(s.table("finetune").unwrap()), ["epochs"]);
        assert!(required(s.table("targets").unwrap()).is_empty());
        assert_eq!(
            required(s.kind("prune").unwrap()),
            ["kind", "name", "parent", "sparsity"]
        );
        assert_eq!(
            required(s.kind("cluster").unwrap()),
            ["clusters", "kind", "name", "parent"]
        );
        assert_eq!(required(s.kind("qat").unwrap()), ["kind", "name", "parent"]);
        assert_eq!(find(&s.root, "stage").unwrap().shape, Shape::Tables);
        assert_eq!(find(&s.root, "width").unwrap().shape, Shape::Float);
        assert_eq!(find(&s.root, "seed").unwrap().shape, Shape::Int);
        assert_eq!(
            find(s.kind("prune").unwrap(), "end_step").unwrap().shape,
            Shape::Int
        );
    }

    /// [`RANGES`] names exactly the numeric keys of the types: none missing, none stale.
    #[test]
    fn every_number_has_a_range_and_every_range_a_number() {
        let s = schema();
        let mut numeric: Vec<(String, String)> = Vec::new();
        let mut add = |table: &str, keys: &[Key]| {
            for k in keys {
                if matches!(k.shape, Shape::Int | Shape::Float)
                    && !numeric.iter().any(|(t, n)| t == table && *n == k.name)
                {
                    numeric.push((table.to_string(), k.name.clone()));
                }
            }
        };
        add("", &s.root);
        for (t, keys) in &s.tables {
            add(t, keys);
        }
        for (_, keys) in &s.kinds {
            add(&s.stage, keys);
        }
        numeric.sort();
        let mut ranged: Vec<(String, String)> = RANGES
            .iter()
            .map(|(t, k, _)| (t.to_string(), k.to_string()))
            .collect();
        ranged.sort();
        assert_eq!(numeric, ranged);
    }

    #[test]
    fn bounds_read_well_and_hold_their_ends() {
        assert_eq!(count(1, 10).to_string(), "a whole number in 1..=10");
        assert_eq!(count(1, u64::MAX).to_string(), "a whole number >= 1");
        assert_eq!(above(0.0, false).to_string(), "a finite number > 0");
        let sparsity = bound("stage", "sparsity").unwrap();
        assert_eq!(sparsity.to_string(), "a finite number in [0, 1)");
        assert!(sparsity.contains(0.0) && !sparsity.contains(1.0) && !sparsity.contains(f64::NAN));
        let width = bound("", "width").unwrap();
        assert!(!width.contains(0.0) && width.contains(4.0) && !width.contains(4.5));
        assert!(!above(0.0, true).contains(f64::INFINITY));
        assert!(count(2, 256).contains_int(256) && !count(2, 256).contains_int(-1));
    }

    #[test]
    fn nearest_finds_typos_only() {
        let keys = ["learning_rate", "batch_size", "epochs"];
        assert_eq!(nearest("learning-rate", keys), Some("learning_rate"));
        assert_eq!(nearest("Learnin_Rate", keys), Some("learning_rate"));
        assert_eq!(nearest("epohcs", keys), Some("epochs"));
        assert_eq!(nearest("colour", keys), None);
        assert_eq!(nearest(&"x".repeat(10_000), keys), None);
        assert_eq!(distance("ab", "ba"), 1);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn stage_name_rules() {
        for ok in ["pruned", "PQAT-2", "a_b", &"z".repeat(MAX_NAME_LEN)] {
            assert_eq!(stage_name_problem(ok), None, "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "/abs",
            "BASELINE",
            "é",
            &"z".repeat(65),
        ] {
            assert!(stage_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn full_example_is_valid() {
        validate(&full_example()).unwrap();
    }
}
