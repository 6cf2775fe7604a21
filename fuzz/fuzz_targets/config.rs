//! Any text given as a config file is either accepted or refused with located problems; it never
//! panics (a panicking validator would take the daemon down on a bad reload).
#![no_main]

use gateway_userspace::config::{Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::load_str(text, "fuzz.toml") {
        Ok(_) => {}
        Err(ConfigError::Invalid(problems)) => {
            for p in problems {
                assert!(p.line >= 1 && p.column >= 1, "unlocated problem: {p}");
            }
        }
        Err(ConfigError::Read { .. }) => unreachable!("no file is read"),
    }
});
