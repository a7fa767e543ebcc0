//! vm-test --cargo fixture: an integration test that runs the package's example the way many
//! server crates run their daemon, by its path next to the test binary.

#[test]
fn runs_the_example_beside_it() {
    let exe = std::env::current_exe().unwrap();
    let examples = exe.parent().unwrap().parent().unwrap().join("examples");
    let out = std::process::Command::new(examples.join("helper")).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "helper ran\n");
    assert!(std::env::var("CARGO_MANIFEST_DIR").unwrap().ends_with("cargo-fixture"));
}
