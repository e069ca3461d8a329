//! The bpf-linker choice of build.rs (which cannot hold tests itself).

#[path = "../build/linker.rs"]
mod linker;

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn versions_compare_as_numbers_not_text() {
    let dirs = names(&["bpf-linker-0.9.15-llvm22", "bpf-linker-0.13.0-llvm22"]);
    assert_eq!(linker::rank(&dirs, Some(22))[0], "bpf-linker-0.13.0-llvm22");
}

#[test]
fn an_older_llvm_than_rustc_is_never_chosen() {
    let dirs = names(&[
        "bpf-linker-0.14.0-llvm21",
        "bpf-linker-0.13.0-llvm23",
        "bpf-linker-0.13.0-llvm22",
    ]);
    assert_eq!(
        linker::rank(&dirs, Some(22)),
        ["bpf-linker-0.13.0-llvm22", "bpf-linker-0.13.0-llvm23"],
        "same major first, then the closest above; llvm21 cannot read LLVM 22 bitcode"
    );
    assert!(linker::rank(&dirs, Some(24)).is_empty());
}

#[test]
fn other_folders_are_ignored() {
    let dirs = names(&[
        "bpf-linker-x-llvm22",
        "bpf-linker-0.13.0",
        "fresh-root",
        "bpf-linker-0.13.0-llvm22",
    ]);
    assert_eq!(linker::rank(&dirs, None), ["bpf-linker-0.13.0-llvm22"]);
    assert_eq!(
        linker::parse_dir("bpf-linker-0.13.0-llvm22"),
        Some((vec![0, 13, 0], 22))
    );
}
