#![no_main]
//! The App Connector token parser: any input is accepted or refused, never
//! a panic; an accepted token's header round-trips.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(token) = afas_sync::afas::token::AppToken::parse(&text) {
        let again = afas_sync::afas::token::AppToken::parse(&token.to_xml()).expect("canonical form parses");
        assert_eq!(token, again);
        let _ = token.header_value();
    }
});
