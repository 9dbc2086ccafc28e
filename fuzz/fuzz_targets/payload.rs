//! The service's parser of a decrypted batch payload (`ingest::parse_payload`): the records of a batch,
//! or the list of what is wrong with them.

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let _ = kwm_service::ingest::parse_payload(data);
    });
}
