#![no_main]

libfuzzer_sys::fuzz_target!(init: husk_vmm::fuzz::init_fuzz_process(), |data: &[u8]| husk_vmm::fuzz::agent_protocol(data));
