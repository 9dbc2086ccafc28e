//! The region file loader: any text as a region file. Refused with an error or loaded; a loaded region
//! answers the look-ups the service makes of it.

use kwm_schemas::RegionConfig;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let Ok(region) = RegionConfig::from_toml_str(text, "fuzz.toml") else {
            return;
        };
        let _ = region.round_cap_nanos();
        for period in ["2025", "2025-H2", "2025-Q4"] {
            let _ = region.round_rho(period.parse().expect("a period"));
        }
        for m in &region.municipalities {
            let _ = region.municipality(m.code);
        }
        let _ = serde_json::to_vec(&region).expect("a loaded region serialises");
    });
}
