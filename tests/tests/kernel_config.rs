//! kernel-config/build-kernel.sh refuses a config whose requested options
//! Kconfig dropped, naming each one, and accepts the project's fragment.

use std::path::Path;
use std::process::{Command, Output};

fn check(fragment: &Path) -> Output {
    let script = husk_tests::paths::repo_dir().join("kernel-config/build-kernel.sh");
    Command::new(&script).arg("--check").arg(fragment).output().expect("running build-kernel.sh --check")
}

fn project_fragment() -> String {
    std::fs::read_to_string(husk_tests::paths::repo_dir().join("kernel-config/husk-guest.config")).unwrap()
}

fn scratch(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("husk-kconfig-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn the_project_fragment_survives_olddefconfig() {
    let output = check(&husk_tests::paths::repo_dir().join("kernel-config/husk-guest.config"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("config OK"), "{stderr}");
}

#[test]
fn a_dropped_option_fails_the_check_and_is_named() {
    // VIRTIO_PCI depends on PCI, which the fragment turns off; the bogus
    // symbol does not exist at all; MODULES is requested off but forced on.
    let fragment = format!("{}\nCONFIG_VIRTIO_PCI=y\nCONFIG_HUSK_NO_SUCH_OPTION=y\n", project_fragment());
    let output = check(&scratch("dropped.config", &fragment));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the check must fail: {stderr}");
    assert!(stderr.contains("MISSING: CONFIG_VIRTIO_PCI=y"), "{stderr}");
    assert!(stderr.contains("MISSING: CONFIG_HUSK_NO_SUCH_OPTION=y"), "{stderr}");
    assert!(stderr.contains("2 requested kernel option(s) did not survive"), "{stderr}");
}

#[test]
fn an_option_required_off_but_left_on_fails_the_check() {
    // Without EXPERT, PRINTK has no prompt and keeps its default (y)
    // whatever a fragment asks.
    let fragment =
        project_fragment().replace("CONFIG_SERIAL_8250=y", "CONFIG_SERIAL_8250=y\n# CONFIG_PRINTK is not set");
    let fragment = fragment.replace("CONFIG_PRINTK=y\n", "");
    let output = check(&scratch("unwanted.config", &fragment));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "the check must fail: {stderr}");
    assert!(stderr.contains("UNWANTED: CONFIG_PRINTK"), "{stderr}");
}
