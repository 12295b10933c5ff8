#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    recoveryd::fuzzing::manifest_cache(data);
});
