//! The Python validators, where installed.

use collab_data::shared::require_shared;
use collab_tflite::tools::Validators;

/// The validators, or `None` (with a note) where they are not installed; with
/// `COLLAB_REQUIRE_TOOLS=1` (set by `.ci/run`) their absence fails the test instead.
pub fn tools() -> Option<Validators> {
    let found = Validators::find(&require_shared().join("tools"));
    if found.is_none() {
        assert!(
            std::env::var("COLLAB_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "COLLAB_REQUIRE_TOOLS=1 but the validators are not installed: \
             pip install -r ../shared/tools/requirements.txt"
        );
        eprintln!("skipped: pip install -r ../shared/tools/requirements.txt to run this test");
    }
    found
}
