//! The service's parser of a decrypted batch payload (`ingest::parse_payload`): the records of a batch,
//! or the list of what is wrong with them.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        // The first byte picks the count the header declares: below, at and above what the body holds.
        if let Some((&declared, body)) = data.split_first() {
            let _ = kwm_service::app::upload::parse_payload(body, u32::from(declared));
        }
    });
}
