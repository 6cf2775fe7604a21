//! Path normalization: never panics, and its output is absolute, free of dot segments, and stable
//! (normalizing twice changes nothing) — so routing cannot be dodged with `..` tricks.
#![no_main]

use gateway_userspace::route::normalize_path;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else { return };
    if let Ok(normalized) = normalize_path(path) {
        let out = normalized.as_deref().unwrap_or(path);
        assert!(out.starts_with('/'));
        assert!(!out.split('/').any(|s| s == "." || s == ".."), "{out}");
        assert_eq!(normalize_path(out).ok(), Some(None), "not stable: {out}");
    }
});
