//! The kubelet's atomic writer for ConfigMap, Secret and projected volumes: the files live
//! in a timestamped directory `..<timestamp>`, `..data` is a symlink to it, and every
//! top-level entry is a symlink through `..data`. An update writes a new timestamped
//! directory and swaps `..data` with one `rename`, so a reader (such as the cell's profile
//! hot reload, which watches `..data`) sees either the old or the new set of files, never
//! a mix.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt as _, symlink};
use std::path::{Component, Path};

pub const DATA_DIR: &str = "..data";
const DATA_TMP: &str = "..data_tmp";

/// A relative path without `..` or absolute parts (the API server validates this too; we
/// refuse instead of writing outside the volume).
fn safe_relative(path: &str) -> Result<&Path, String> {
    let p = Path::new(path);
    let ok = !path.is_empty()
        && !path.starts_with("..")
        && p.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then_some(p)
        .ok_or_else(|| format!("volume item path {path:?} must be relative without '..'"))
}

/// The files currently visible through `..data`.
fn current(dir: &Path) -> Option<BTreeMap<String, Vec<u8>>> {
    let data = dir.join(DATA_DIR);
    let target = fs::read_link(&data).ok()?;
    let mut files = BTreeMap::new();
    collect(&dir.join(target), "", &mut files).ok()?;
    Some(files)
}

fn collect(dir: &Path, prefix: &str, out: &mut BTreeMap<String, Vec<u8>>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        if entry.file_type()?.is_dir() {
            collect(&entry.path(), &format!("{path}/"), out)?;
        } else {
            out.insert(path, fs::read(entry.path())?);
        }
    }
    Ok(())
}

/// Makes `dir` show exactly `files` (path → content) with `mode`; returns whether anything
/// changed. Unchanged payloads touch nothing (no spurious reloads).
pub fn write(dir: &Path, files: &BTreeMap<String, Vec<u8>>, mode: u32) -> Result<bool, String> {
    let io = |what: &str, e: io::Error| format!("{what} in {}: {e}", dir.display());
    for path in files.keys() {
        safe_relative(path)?;
    }
    if current(dir).as_ref() == Some(files) {
        return Ok(false);
    }
    fs::create_dir_all(dir).map_err(|e| io("cannot create the volume", e))?;
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let fresh = dir.join(&stamp);
    fs::create_dir(&fresh).map_err(|e| io("cannot create a payload directory", e))?;
    for (path, content) in files {
        let file = fresh.join(path);
        if let Some(parent) = file.parent() {
            fs::create_dir_all(parent).map_err(|e| io("cannot create a directory", e))?;
        }
        fs::write(&file, content).map_err(|e| io("cannot write a file", e))?;
        fs::set_permissions(&file, fs::Permissions::from_mode(mode))
            .map_err(|e| io("cannot set permissions", e))?;
    }
    let old = fs::read_link(dir.join(DATA_DIR)).ok();
    let tmp = dir.join(DATA_TMP);
    let _ = fs::remove_file(&tmp);
    symlink(&stamp, &tmp).map_err(|e| io("cannot link the payload", e))?;
    fs::rename(&tmp, dir.join(DATA_DIR)).map_err(|e| io("cannot swap ..data", e))?;
    // Top-level names → symlinks through ..data; stale ones removed.
    let wanted: BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_owned))
        .collect();
    for name in &wanted {
        let link = dir.join(name);
        if fs::read_link(&link).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &link)
                .map_err(|e| io("cannot link a key", e))?;
        }
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with("..") && !wanted.contains(&name) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    if let Some(old) = old
        && old != Path::new(&stamp)
    {
        let _ = fs::remove_dir_all(dir.join(old));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(kv: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        kv.iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn swaps_data_atomically_and_prunes_keys() {
        let dir = tempfile::tempdir().unwrap();
        let v = dir.path().join("vol");
        assert!(write(&v, &files(&[("a", "1"), ("b", "2"), ("sub/c", "3")]), 0o644).unwrap());
        assert_eq!(fs::read_to_string(v.join("a")).unwrap(), "1");
        assert_eq!(fs::read_to_string(v.join("sub/c")).unwrap(), "3");
        assert_eq!(fs::read_link(v.join("a")).unwrap(), Path::new("..data/a"));
        let first = fs::read_link(v.join(DATA_DIR)).unwrap();
        assert!(!write(&v, &files(&[("a", "1"), ("b", "2"), ("sub/c", "3")]), 0o644).unwrap());
        assert_eq!(
            fs::read_link(v.join(DATA_DIR)).unwrap(),
            first,
            "no-op keeps ..data"
        );

        assert!(write(&v, &files(&[("a", "changed")]), 0o644).unwrap());
        assert_eq!(fs::read_to_string(v.join("a")).unwrap(), "changed");
        assert!(!v.join("b").exists(), "removed key is gone");
        assert!(
            fs::symlink_metadata(v.join("b")).is_err(),
            "and its link too"
        );
        let second = fs::read_link(v.join(DATA_DIR)).unwrap();
        assert_ne!(first, second);
        assert!(!v.join(&first).exists(), "old payload removed");
    }

    #[test]
    fn refuses_paths_leaving_the_volume() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write(dir.path(), &files(&[("../x", "1")]), 0o644).is_err());
        assert!(write(dir.path(), &files(&[("/etc/x", "1")]), 0o644).is_err());
        assert!(write(dir.path(), &files(&[("..data", "1")]), 0o644).is_err());
    }
}
