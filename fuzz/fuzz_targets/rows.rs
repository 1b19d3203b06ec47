#![no_main]
//! AFAS row decoding: every cell accessor and the employee decoder on
//! arbitrary JSON, never a panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(serde_json::Value::Object(row)) = serde_json::from_slice::<serde_json::Value>(data) else {
        if let Ok(s) = std::str::from_utf8(data) {
            let _ = afas_sync::afas::rows::parse_afas_date(s);
            let _ = afas_sync::afas::rows::Decimal::parse(s);
            let _ = afas_sync::model::EmailAddress::parse(s);
        }
        return;
    };
    use afas_sync::afas::rows;
    for field in row.keys() {
        let _ = rows::text(&row, field);
        let _ = rows::boolean(&row, field);
        let _ = rows::decimal(&row, field);
        let _ = rows::date(&row, field);
    }
    let mapping = afas_sync::config::Mapping::default();
    let as_of = jiff::civil::Date::constant(2026, 1, 1);
    if let Ok(draft) = afas_sync::afas::decode::decode_employee(&row, &mapping) {
        let _ = draft.finish(None, Default::default(), as_of, &mapping);
    }
    let _ = afas_sync::afas::decode::normalize_contract(&row, &mapping);
    let _ = afas_sync::afas::decode::decode_salary(&row, &mapping);
});
