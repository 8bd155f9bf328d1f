//! Tree configs are read strictly (issue #17 items 1, 4, 5 and 9): a stage name is never a
//! path, an unknown or misplaced key is an error naming its line, table and the nearest valid
//! key, and every number is checked against its range, whether the config comes from text
//! ([`TreeConfig::from_toml`]) or is built in code ([`TreeConfig::check`]).

use std::path::{Path, PathBuf};

use collab::config::{Bound, ConfigError, RANGES};
use collab::tree::TreeConfig;
use collab_data::SeededRng;

fn configs_dir() -> PathBuf {
    // Tests run in their crate's folder; the build-time path is only the fallback.
    [Path::new("../../configs").to_path_buf()]
        .into_iter()
        .chain([Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs")])
        .find(|p| p.is_dir())
        .expect("configs/")
}

fn quick() -> String {
    std::fs::read_to_string(configs_dir().join("quick.toml")).unwrap()
}

/// A small valid config; line 1 is `model`, the `[finetune]` header is on line 7.
const BASE: &str = r#"model = "ds-cnn-s"
baseline_epochs = 0
calibration_samples = 8
synthetic_train = 64
synthetic_val = 32

[finetune]
epochs = 1
batch_size = 32
learning_rate = 1e-3

[[stage]]
name = "pruned"
parent = "baseline"
kind = "prune"
sparsity = 0.5

[[stage]]
name = "clustered"
parent = "baseline"
kind = "cluster"
clusters = 16
"#;

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|l| l.trim_start().starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
        + 1
}

/// `text` with `line` inserted after the first line that starts with `after`.
fn insert_after(text: &str, after: &str, line: &str) -> String {
    let at = line_of(text, after);
    let mut lines: Vec<&str> = text.lines().collect();
    lines.insert(at, line);
    lines.join("\n") + "\n"
}

/// `text` with the first line that starts with `prefix` replaced by `line`.
fn replace_line(text: &str, prefix: &str, line: &str) -> String {
    let at = line_of(text, prefix) - 1;
    let mut lines: Vec<&str> = text.lines().collect();
    lines[at] = line;
    lines.join("\n") + "\n"
}

/// The error of `text`, which must be on `line` and mention every one of `parts`.
#[track_caller]
fn rejects(text: &str, line: usize, parts: &[&str]) -> ConfigError {
    let err = match TreeConfig::from_toml(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    let shown = err.to_string();
    assert_eq!(err.line, Some(line), "{shown}\n--- in ---\n{text}");
    assert!(
        shown.starts_with(&format!("line {line}: ")),
        "the message names the line: {shown}"
    );
    for part in parts {
        assert!(shown.contains(part), "{shown:?} lacks {part:?}");
    }
    err
}

#[test]
fn base_and_shipped_configs_load() {
    let base = TreeConfig::from_toml(BASE).unwrap();
    assert_eq!(base.stages.len(), 2);
    for entry in std::fs::read_dir(configs_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let config =
                TreeConfig::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert_eq!(config, TreeConfig::open(&path).unwrap());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 1: a stage name is a folder name, never a path.
// ---------------------------------------------------------------------------------------------

/// BASE with a third stage named `name` (its `name` key on line 25).
fn with_stage_named(name: &str) -> String {
    format!("{BASE}\n[[stage]]\nname = {name:?}\nparent = \"baseline\"\nkind = \"qat\"\n")
}

#[track_caller]
fn bad_name(name: &str, why: &str) {
    let text = with_stage_named(name);
    let err = rejects(
        &text,
        25,
        &[
            "[[stage]] #3",
            &format!("the name {name:?} cannot be used"),
            why,
            "ASCII letters, digits, `_` or `-`",
            "not `baseline`",
        ],
    );
    assert_eq!(err.key.as_deref(), Some("stage.name"));
}

#[test]
fn empty_stage_name_is_rejected() {
    bad_name("", "is empty");
}

#[test]
fn relative_path_stage_name_is_rejected() {
    bad_name("../victim_dir", "contains `.`");
    bad_name("a/b", "contains `/`");
    bad_name("a\\b", "contains `\\\\`");
}

#[test]
fn absolute_path_stage_name_is_rejected() {
    bad_name("/tmp/victim_dir", "contains `/`");
}

#[test]
fn dot_stage_names_are_rejected() {
    bad_name(".", "contains `.`");
    bad_name("..", "contains `.`");
}

#[test]
fn other_unusable_stage_names_are_rejected() {
    bad_name("baseline", "reserved for the root");
    bad_name("Baseline", "reserved for the root");
    bad_name("two words", "contains a space");
    bad_name("tab\tname", "contains `\\t`");
    bad_name("prunéd", "contains `é`");
    bad_name(&"a".repeat(65), "has 65 characters");
    // The longest name and every allowed character are fine.
    for ok in [&"a".repeat(64), "Stage_2-b", "9"] {
        TreeConfig::from_toml(&with_stage_named(ok)).unwrap();
    }
}

#[test]
fn stage_names_that_collide_as_folders_are_rejected() {
    rejects(
        &with_stage_named("pruned"),
        25,
        &["[[stage]] #3", "`pruned`", "already used by [[stage]] #1"],
    );
    rejects(
        &with_stage_named("Pruned"),
        25,
        &[
            "[[stage]] #3",
            "`Pruned`",
            "only in case",
            "`pruned`",
            "case-insensitive",
        ],
    );
}

#[test]
fn undefined_parent_names_the_nearest_stage() {
    let text =
        format!("{BASE}\n[[stage]]\nname = \"pqat\"\nparent = \"prunned\"\nkind = \"qat\"\n");
    rejects(
        &text,
        26,
        &[
            "[[stage]] #3 (`pqat`)",
            "`prunned`",
            "did you mean `pruned`?",
        ],
    );
}

#[test]
fn stage_names_are_checked_in_code_too() {
    let mut config = TreeConfig::from_toml(BASE).unwrap();
    config.stages[1].name = "../victim_dir".into();
    let err = config.check().unwrap_err();
    assert_eq!(err.line, None);
    assert!(err.message.contains("[[stage]] #2"), "{err}");
    assert!(err.message.contains("\"../victim_dir\""), "{err}");
    assert!(config.validate().unwrap_err().contains("../victim_dir"));
}

// ---------------------------------------------------------------------------------------------
// Item 4: unknown and misplaced keys.
// ---------------------------------------------------------------------------------------------

#[test]
fn learning_rate_with_a_dash_suggests_the_key() {
    let text = replace_line(BASE, "learning_rate", "learning-rate = 1e-3");
    rejects(
        &text,
        10,
        &[
            "unknown key `learning-rate`",
            "in [finetune]",
            "(did you mean `learning_rate`?",
        ],
    );
}

#[test]
fn misspelt_learning_rate_suggests_the_key() {
    let text = replace_line(BASE, "learning_rate", "learnin_rate = 1e-3");
    rejects(
        &text,
        10,
        &[
            "unknown key `learnin_rate`",
            "in [finetune]",
            "(did you mean `learning_rate`?",
            "`batch_size`",
        ],
    );
}

#[test]
fn misspelt_baseline_epochs_suggests_the_key() {
    let text = replace_line(BASE, "baseline_epochs", "baseline_epoch = 3");
    rejects(
        &text,
        2,
        &[
            "unknown key `baseline_epoch`",
            "at the top level",
            "(did you mean `baseline_epochs`?",
        ],
    );
}

#[test]
fn misspelt_frequency_suggests_the_key() {
    let text = insert_after(BASE, "sparsity", "frequncy = 2");
    rejects(
        &text,
        17,
        &[
            "unknown key `frequncy`",
            "[[stage]] #1 (`pruned`)",
            "(did you mean `frequency`?",
        ],
    );
}

#[test]
fn misspelt_skip_depthwise_suggests_the_key() {
    let text = insert_after(BASE, "sparsity", "skip_depthwize = true");
    rejects(
        &text,
        17,
        &[
            "unknown key `skip_depthwize`",
            "(did you mean `skip_depthwise`?",
        ],
    );
}

#[test]
fn stages_table_suggests_stage() {
    let text = BASE.replace("[[stage]]", "[[stages]]");
    rejects(
        &text,
        12,
        &["unknown table `[[stages]]`", "(did you mean `[[stage]]`?"],
    );
    let text = BASE.replace("[finetune]", "[finetuning]");
    rejects(
        &text,
        7,
        &[
            "unknown table `[finetuning]`",
            "(did you mean `[finetune]`?",
        ],
    );
}

#[test]
fn single_bracket_stage_is_explained() {
    let text = BASE.replacen("[[stage]]", "[stage]", 1);
    let text = text.replacen("[[stage]]\nname = \"clustered\"", "[other]", 1);
    let err = TreeConfig::from_toml(&text).unwrap_err();
    assert!(err.to_string().contains("[[stage]]"), "{err}");
}

#[test]
fn top_level_keys_after_a_table_header_are_misplaced() {
    let text = format!("{BASE}\n[targets]\nmax_gzip = 20000\nseed = 3\n");
    rejects(
        &text,
        line_of(&text, "seed"),
        &[
            "`seed` is a top-level setting",
            "below the `[targets]` header",
            "above the first [table] header",
        ],
    );
    // The same below a stage and below [finetune].
    let text = format!("{BASE}augment = false\n");
    rejects(
        &text,
        line_of(&text, "augment"),
        &[
            "`augment` is a top-level setting",
            "`[[stage]]`",
            "above the first [table] header",
        ],
    );
    let text = insert_after(BASE, "learning_rate", "synthetic_train = 100");
    rejects(
        &text,
        11,
        &["`synthetic_train` is a top-level setting", "`[finetune]`"],
    );
}

#[test]
fn finetune_keys_at_the_top_level_are_misplaced() {
    let text = insert_after(BASE, "model", "learning_rate = 1e-3");
    rejects(
        &text,
        2,
        &[
            "`learning_rate` is not a top-level setting",
            "in [finetune]",
            "move it below the `[finetune]` header",
        ],
    );
    // A typo of a key of another table: suggested with its table.
    let text = insert_after(BASE, "model", "learnin_rate = 1e-3");
    rejects(
        &text,
        2,
        &[
            "unknown key `learnin_rate`",
            "(did you mean `learning_rate` in [finetune]?)",
        ],
    );
}

#[test]
fn sparsity_on_a_cluster_stage_is_misplaced() {
    let text = insert_after(BASE, "clusters", "sparsity = 0.5");
    rejects(
        &text,
        23,
        &[
            "`sparsity` is not a key of a `cluster` stage",
            "[[stage]] #2 (`clustered`)",
            "but of `prune` stages",
            "`clusters`",
            "`preserve_sparsity`",
        ],
    );
}

#[test]
fn unknown_kind_suggests_the_nearest() {
    let text = BASE.replace("kind = \"prune\"", "kind = \"prun\"");
    rejects(
        &text,
        15,
        &[
            "unknown kind `prun`",
            "[[stage]] #1",
            "(did you mean `prune`?",
            "`cluster`",
            "`qat`",
        ],
    );
    let text = BASE.replace("kind = \"prune\"\n", "");
    rejects(&text, 12, &["[[stage]] #1 (`pruned`) has no `kind`"]);
}

#[test]
fn missing_required_keys_are_named() {
    let text = BASE.replace("sparsity = 0.5\n", "");
    rejects(
        &text,
        12,
        &["[[stage]] #1 (`pruned`) has no `sparsity`", "[0, 1)"],
    );
    let text = BASE.replace("epochs = 1\n", "");
    rejects(&text, 7, &["[finetune] has no `epochs`", "1..=10000"]);
    let err = TreeConfig::from_toml(&BASE.replace("model = \"ds-cnn-s\"\n", "")).unwrap_err();
    assert!(err.message.contains("`model` is missing"), "{err}");
}

#[test]
fn wrong_types_are_named() {
    let text = replace_line(BASE, "epochs", "epochs = \"two\"");
    rejects(
        &text,
        8,
        &["`epochs` in [finetune]", "whole number", "not a string"],
    );
    let text = replace_line(BASE, "model", "model = 3");
    rejects(&text, 1, &["`model`", "a string in quotes"]);
    let text = insert_after(BASE, "model", "augment = \"no\"");
    rejects(&text, 2, &["`augment`", "true or false"]);
    let text = insert_after(BASE, "model", "seed = 1979-05-27");
    rejects(&text, 2, &["`seed`", "not a date"]);
}

#[test]
fn syntax_errors_name_the_line() {
    let text = insert_after(BASE, "batch_size", "epochs 3");
    rejects(&text, 10, &["not valid TOML"]);
    let text = insert_after(BASE, "batch_size", "epochs = 3");
    rejects(&text, 10, &["not valid TOML", "duplicate key"]);
}

// ---------------------------------------------------------------------------------------------
// Items 5 and 9: ranges.
// ---------------------------------------------------------------------------------------------

#[test]
fn negative_learning_rate_is_rejected() {
    let text = replace_line(BASE, "learning_rate", "learning_rate = -1e-3");
    rejects(
        &text,
        10,
        &[
            "`learning_rate` = -0.001 in [finetune]",
            "a finite number > 0",
        ],
    );
}

#[test]
fn nan_and_zero_learning_rates_are_rejected() {
    for v in ["nan", "inf", "0", "0.0"] {
        let text = replace_line(BASE, "learning_rate", &format!("learning_rate = {v}"));
        rejects(&text, 10, &["`learning_rate`", "out of range", "> 0"]);
    }
}

#[test]
fn zero_frequency_is_rejected() {
    let text = insert_after(BASE, "sparsity", "frequency = 0");
    rejects(
        &text,
        17,
        &[
            "`frequency` = 0 in [[stage]] #1 (`pruned`)",
            "a whole number >= 1",
        ],
    );
}

#[test]
fn degenerate_stage_settings_are_rejected() {
    let cases = [
        ("sparsity", "sparsity = 1.0", "[0, 1)"),
        ("sparsity", "sparsity = -0.1", "[0, 1)"),
        ("sparsity", "sparsity = nan", "[0, 1)"),
        ("sparsity", "sparsity = 0.5\npower = 0", "> 0"),
        ("sparsity", "sparsity = 0.5\nend_step = 0", ">= 1"),
        ("clusters", "clusters = 1", "2..=256"),
        ("clusters", "clusters = 257", "2..=256"),
    ];
    for (prefix, line, range) in cases {
        let text = replace_line(BASE, prefix, line);
        let key = line.lines().last().unwrap().split(' ').next().unwrap();
        let at = line_of(&text, &format!("{key} "));
        rejects(&text, at, &[&format!("`{key}` = "), "out of range", range]);
    }
}

#[test]
fn degenerate_top_level_and_finetune_settings_are_rejected() {
    let cases = [
        ("epochs", "epochs = 0", "1..=10000"),
        ("epochs", "epochs = -1", "1..=10000"),
        ("batch_size", "batch_size = 0", "1..=100000"),
        (
            "calibration_samples",
            "calibration_samples = 0",
            "1..=1000000",
        ),
        ("baseline_epochs", "baseline_epochs = 10001", "0..=10000"),
        (
            "model",
            "model = \"mobilenet-v1-cifar\"\nwidth = 0",
            "(0, 4]",
        ),
        (
            "model",
            "model = \"mobilenet-v1-cifar\"\nwidth = 4.5",
            "(0, 4]",
        ),
        ("synthetic_val", "synthetic_val = 0", "1..=1000000"),
    ];
    for (prefix, line, range) in cases {
        let text = replace_line(BASE, prefix, line);
        let key = line.lines().last().unwrap().split(' ').next().unwrap();
        let at = line_of(&text, &format!("{key} "));
        rejects(&text, at, &[&format!("`{key}` = "), "out of range", range]);
    }
    let text = format!("{BASE}\n[targets]\nmax_accuracy_drop = -1\n");
    rejects(
        &text,
        line_of(&text, "max_accuracy_drop"),
        &["`max_accuracy_drop` = -1 in [targets]", ">= 0"],
    );
}

#[test]
fn absurd_sizes_are_rejected() {
    // A float for a whole number: said so, with the range.
    let text = replace_line(BASE, "synthetic_train", "synthetic_train = 1e12");
    rejects(
        &text,
        4,
        &[
            "`synthetic_train` = 1000000000000",
            "a whole number in 1..=1000000",
            "without a decimal point or exponent",
        ],
    );
    let text = replace_line(BASE, "epochs", "epochs = 1e12");
    rejects(&text, 8, &["`epochs`", "1..=10000", "decimal point"]);
    let text = replace_line(BASE, "synthetic_train", "synthetic_train = 1000000000000");
    rejects(
        &text,
        4,
        &[
            "`synthetic_train` = 1000000000000",
            "out of range",
            "1..=1000000",
        ],
    );
    let text = replace_line(BASE, "epochs", "epochs = 9223372036854775807");
    rejects(&text, 8, &["`epochs`", "out of range"]);
}

/// An invalid value for `bound`, as TOML, when there is one (`seed` takes any whole number).
fn invalid_value(bound: Bound) -> Option<String> {
    match bound {
        Bound::Count { min, .. } if min > 0 => Some((min - 1).to_string()),
        Bound::Count { max, .. } if max < i64::MAX as u64 => Some((max + 1).to_string()),
        Bound::Count { .. } => None,
        Bound::Real { min, .. } => Some(format!("{:?}", min - 1.0)),
    }
}

/// Every range of [`RANGES`] is enforced on text (with the line) and on a config built in code
/// (the same check the `collab` commands run).
#[test]
fn every_range_is_enforced_on_text_and_in_code() {
    let base: toml::Table = toml::from_str(BASE).unwrap();
    let mut tested = 0;
    for (table, key, bound) in RANGES {
        let Some(bad) = invalid_value(*bound) else {
            continue;
        };
        let value: toml::Value =
            toml::from_str::<toml::Table>(&format!("v = {bad}")).unwrap()["v"].clone();
        // Every place the key could be: the table, or each stage.
        let mut variants: Vec<toml::Table> = Vec::new();
        match *table {
            "" => {
                let mut t = base.clone();
                t.insert(key.to_string(), value.clone());
                variants.push(t);
            }
            "stage" => {
                for i in 0..base["stage"].as_array().unwrap().len() {
                    let mut t = base.clone();
                    t["stage"].as_array_mut().unwrap()[i]
                        .as_table_mut()
                        .unwrap()
                        .insert(key.to_string(), value.clone());
                    variants.push(t);
                }
            }
            sub => {
                let mut t = base.clone();
                t.entry(sub.to_string())
                    .or_insert_with(|| toml::Value::Table(Default::default()))
                    .as_table_mut()
                    .unwrap()
                    .insert(key.to_string(), value.clone());
                variants.push(t);
            }
        }
        let mut text_hits = 0;
        let mut code_hits = 0;
        for variant in variants {
            let text = toml::to_string(&variant).unwrap();
            if let Err(e) = TreeConfig::from_toml(&text)
                && e.message.contains(&format!("`{key}` = "))
                && e.message.contains("out of range")
            {
                assert_eq!(e.line, Some(line_of(&text, &format!("{key} "))), "{e}");
                assert!(e.message.contains(&bound.to_string()), "{e}");
                text_hits += 1;
            }
            // In code: serde alone accepts it (where the type can hold it), `check` does not.
            if let Ok(config) = toml::Value::Table(variant).try_into::<TreeConfig>()
                && let Err(e) = config.check()
                && e.message.contains(&format!("`{key}` = "))
            {
                assert_eq!(e.line, None);
                code_hits += 1;
            }
        }
        assert_eq!(
            text_hits, 1,
            "{table}.{key} = {bad} is not rejected on text"
        );
        let unsigned = matches!(bound, Bound::Count { .. }) && bad.starts_with('-');
        assert!(
            code_hits == 1 || unsigned,
            "{table}.{key} = {bad} is not rejected in code"
        );
        tested += 1;
    }
    // All but `seed` and the byte targets (`max_bytes`, `max_gzip`, `max_flash_bytes`,
    // `max_arena_bytes`: any whole number >= 0).
    assert_eq!(tested, RANGES.len() - 5);
}

// ---------------------------------------------------------------------------------------------
// Random mutations of configs/quick.toml: an error or a valid config, never a panic.
// ---------------------------------------------------------------------------------------------

const KEYS: &[&str] = &[
    "model",
    "seed",
    "width",
    "baseline_epochs",
    "augment",
    "calibration_samples",
    "synthetic_train",
    "synthetic_val",
    "epochs",
    "batch_size",
    "learning_rate",
    "name",
    "parent",
    "kind",
    "sparsity",
    "frequency",
    "end_step",
    "power",
    "skip_depthwise",
    "clusters",
    "per_channel",
    "preserve_sparsity",
    "max_gzip",
    "max_accuracy_drop",
    "plot_layer",
];

const VALUES: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "256",
    "1e12",
    "0.5",
    "1.0",
    "nan",
    "-inf",
    "true",
    "\"\"",
    "\"baseline\"",
    "\"pruned\"",
    "\"qat\"",
    "\"cluster\"",
    "\"prune\"",
    "\"../x\"",
    "[]",
    "{}",
    "1979-05-27",
    "9223372036854775807",
    "\"ds-cnn-s\"",
];

fn mutate(text: &str, rng: &mut SeededRng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.index(3) {
        let n = lines.len();
        let i = rng.index(n);
        match rng.index(7) {
            0 => {
                lines.remove(i);
            }
            1 => {
                let l = lines[i].clone();
                lines.insert(i, l);
            }
            2 => lines.swap(i, rng.index(n)),
            3 => {
                // One edit in the key.
                if let Some((key, value)) = lines[i].split_once('=') {
                    let mut key: Vec<char> = key.trim().chars().collect();
                    if !key.is_empty() {
                        let at = rng.index(key.len());
                        match rng.index(3) {
                            0 => {
                                key.remove(at);
                            }
                            1 => key.insert(at, (b'a' + rng.index(26) as u8) as char),
                            _ => key[at] = '-',
                        }
                    }
                    lines[i] = format!("{} ={value}", key.into_iter().collect::<String>());
                }
            }
            4 => {
                if let Some((key, _)) = lines[i].split_once('=') {
                    lines[i] = format!("{key}= {}", VALUES[rng.index(VALUES.len())]);
                }
            }
            5 => {
                let key = KEYS[rng.index(KEYS.len())];
                let value = VALUES[rng.index(VALUES.len())];
                lines.insert(i, format!("{key} = {value}"));
            }
            _ => {
                let header = [
                    "[[stage]]",
                    "[finetune]",
                    "[targets]",
                    "[[stages]]",
                    "[stage]",
                ][rng.index(5)];
                lines.insert(i, header.to_string());
            }
        }
    }
    lines.join("\n") + "\n"
}

#[test]
fn random_mutations_of_quick_are_errors_or_valid_configs() {
    let quick = quick();
    let mut rng = SeededRng::new(17);
    let (mut ok, mut err) = (0, 0);
    for case in 0..200 {
        let text = mutate(&quick, &mut rng);
        let outcome = std::panic::catch_unwind(|| TreeConfig::from_toml(&text));
        match outcome {
            Err(_) => panic!("case {case} panicked on:\n{text}"),
            Ok(Ok(config)) => {
                config
                    .check()
                    .unwrap_or_else(|e| panic!("case {case}: accepted yet invalid ({e}):\n{text}"));
                ok += 1;
            }
            Ok(Err(e)) => {
                // Every problem in the text is placed: a line, or a top-level key that is missing.
                assert!(
                    e.line.is_some()
                        || e.message.contains("missing")
                        || e.message.contains("no `["),
                    "case {case}: no line in {e}:\n{text}"
                );
                err += 1;
            }
        }
    }
    // The mutations reach both outcomes.
    assert!(ok > 5 && err > 50, "{ok} accepted, {err} rejected");
}

#[test]
fn channel_scaled_clustering_is_checked() {
    let scaled = insert_after(BASE, "clusters = 16", "channel_scaled = true");
    let config = TreeConfig::from_toml(&scaled).unwrap();
    assert!(matches!(
        config.stages[1].scheme,
        collab::tree::Scheme::Cluster {
            channel_scaled: true,
            per_channel: false,
            ..
        }
    ));
    let both = insert_after(&scaled, "channel_scaled", "per_channel = true");
    let err = rejects(
        &both,
        line_of(&both, "channel_scaled"),
        &["[[stage]] #2 (`clustered`)", "exclusive"],
    );
    assert_eq!(err.key.as_deref(), Some("stage.channel_scaled"));
    let few = replace_line(&scaled, "clusters = 16", "clusters = 2");
    rejects(
        &few,
        line_of(&few, "clusters = 2"),
        &["channel_scaled needs clusters >= 3", "got 2"],
    );
}
