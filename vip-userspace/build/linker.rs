//! Choosing a cached bpf-linker: `bpf-linker-<version>-llvm<major>` folders
//! made by `cargo xtask bootstrap`. Used by build.rs; tested in
//! tests/build_linker.rs.

/// `bpf-linker-0.13.0-llvm22` -> ([0, 13, 0], 22).
pub fn parse_dir(name: &str) -> Option<(Vec<u32>, u32)> {
    let rest = name.strip_prefix("bpf-linker-")?;
    let (ver, llvm) = rest.rsplit_once("-llvm")?;
    let ver = ver
        .split('.')
        .map(|p| p.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    Some((ver, llvm.parse().ok()?))
}

/// The usable folder names, best first: a linker whose LLVM major is below
/// rustc's cannot read its bitcode (`Invalid record`) and is left out; the same
/// major comes first, then the closest above, then the highest version compared
/// as numbers (as text, 0.9 sorts above 0.13). With rustc's LLVM unknown, every
/// folder is kept, highest LLVM then version first.
pub fn rank(names: &[String], rustc_llvm: Option<u32>) -> Vec<String> {
    let mut v: Vec<(bool, u32, Vec<u32>, String)> = names
        .iter()
        .filter_map(|n| parse_dir(n).map(|(ver, llvm)| (ver, llvm, n.clone())))
        .filter(|(_, llvm, _)| rustc_llvm.is_none_or(|r| *llvm >= r))
        .map(|(ver, llvm, n)| (Some(llvm) == rustc_llvm, llvm, ver, n))
        .collect();
    // Same major first, then the closest major above, then the newest version.
    v.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(match rustc_llvm {
                Some(_) => a.1.cmp(&b.1),
                None => b.1.cmp(&a.1),
            })
            .then(b.2.cmp(&a.2))
    });
    v.into_iter().map(|(_, _, _, n)| n).collect()
}
