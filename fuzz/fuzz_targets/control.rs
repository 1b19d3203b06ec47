#![no_main]
//! The control-socket protocol: any request line decodes or is refused,
//! never a panic; a decoded call re-encodes to an equal call.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(call) = serde_json::from_slice::<afas_sync::daemon::control::Call>(data) {
        let text = serde_json::to_string(&call).expect("encodes");
        let again: afas_sync::daemon::control::Call = serde_json::from_str(&text).expect("round trip");
        assert_eq!(call, again);
    }
    let _ = serde_json::from_slice::<afas_sync::daemon::control::Line>(data);
});
