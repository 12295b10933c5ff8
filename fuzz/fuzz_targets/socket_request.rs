#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    recoveryd::fuzzing::socket_request(data);
});
