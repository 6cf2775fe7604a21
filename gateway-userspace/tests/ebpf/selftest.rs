//! Every test_run case (see `gateway_userspace::ebpf::selftest`) on the kernel the tests run on.

use gateway_userspace::ebpf::selftest;

#[test]
fn test_run_cases_pass_on_this_kernel() {
    let report = selftest::run().unwrap_or_else(|e| panic!("the guard could not be loaded: {e}"));
    println!("{report}");
    assert!(report.cases.len() > 90, "only {} cases ran", report.cases.len());
    let failures: Vec<String> =
        report.failures().map(|c| format!("{} {}: {:?}", c.program, c.name, c.failure)).collect();
    assert!(failures.is_empty(), "failed cases:\n{}", failures.join("\n"));
}
