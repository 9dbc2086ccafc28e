//! The checked-in JSON Schema files under `schemas/json/` must equal what the types generate.
//! Run with `KWM_UPDATE_SCHEMAS=1` to rewrite them after changing a type.

use std::path::PathBuf;

#[test]
fn checked_in_json_schemas_are_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let update = std::env::var_os("KWM_UPDATE_SCHEMAS").is_some();
    let mut stale = Vec::new();
    for (name, schema) in kwm_schemas::json_schemas() {
        let text = serde_json::to_string_pretty(&schema).expect("schema serialises") + "\n";
        let path = dir.join(name);
        if update {
            std::fs::create_dir_all(&dir).expect("create schemas/json");
            std::fs::write(&path, &text).expect("write schema");
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "schemas/json is out of date for {stale:?}; run `KWM_UPDATE_SCHEMAS=1 cargo test -p kwm-schemas --test json_schemas`"
    );
}
