#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    recoveryd::fuzzing::ostree_status(data);
});
