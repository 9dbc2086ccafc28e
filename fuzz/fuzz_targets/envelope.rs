//! The sealed-envelope decoder: a `SealedBatch` from JSON, its canonical header, the signature check
//! and HPKE opening with the fuzz keys, as the service does with an upload's body.

use kwm_schemas::envelope::{self, SealedBatch};

fn main() {
    let key = kwm_fuzz::service_key();
    let provider = kwm_fuzz::provider_public_key();
    afl::fuzz!(|data: &[u8]| {
        let Ok(batch) = serde_json::from_slice::<SealedBatch>(data) else {
            return;
        };
        let canonical = batch.header.canonical_bytes();
        assert!(canonical.starts_with(b"kwm-batch-header\n"));
        // What is accepted re-serialises to what parses back to the same batch.
        let again = serde_json::to_vec(&batch).expect("a parsed batch serialises");
        let back: SealedBatch = serde_json::from_slice(&again).expect("and parses back");
        assert_eq!(back, batch);
        if envelope::verify_signature(&batch, &provider).is_ok() {
            let _ = envelope::open(&batch, &key);
        }
        // Opening never depends on the signature check having run first.
        let _ = envelope::open(&batch, &key);
    });
}
