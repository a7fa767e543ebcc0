//! vm-test --cargo fixture: unit tests that pass, fail, hang, skip and are ignored.

#[cfg(test)]
mod tests {
    /// Passes where ublk_drv is loaded and the test runs as root: in the harness's VM.
    #[test]
    fn passes_with_ublk() {
        assert!(std::path::Path::new("/dev/ublk-control").exists(), "no ublk here");
    }

    #[test]
    fn fails() {
        assert_eq!(1 + 1, 3, "arithmetic is broken");
    }

    /// Waits forever (in S state): the harness's limit must end it.
    #[test]
    fn hangs() {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1000));
        }
    }

    #[test]
    fn skips_when_the_kernel_lacks_a_feature() {
        println!("skipping: kernel lacks UBLK_F_FIXTURE");
    }

    #[test]
    #[ignore]
    fn ignored() {
        panic!("an ignored test never runs");
    }
}
