//! Writes a directory tree as an uncompressed `newc` cpio archive (what the kernel unpacks as its
//! initramfs). Small enough to write here instead of depending on a cpio tool.

use std::{
    fs,
    io::{BufWriter, Write},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use anyhow::{Context as _, Result};

pub fn write_newc(root: &Path, out: &Path) -> Result<()> {
    let mut w = BufWriter::new(fs::File::create(out).with_context(|| format!("creating {}", out.display()))?);
    let mut entries = Vec::new();
    collect(root, root, &mut entries)?;
    for (ino, rel) in (1u32..).zip(entries) {
        let path = root.join(&rel);
        let meta = fs::symlink_metadata(&path)?;
        let name = rel.to_string_lossy().into_owned();
        let (data, mode) = if meta.file_type().is_symlink() {
            (fs::read_link(&path)?.to_string_lossy().into_owned().into_bytes(), 0o120777)
        } else if meta.is_dir() {
            (Vec::new(), 0o040000 | (meta.permissions().mode() & 0o7777))
        } else {
            (fs::read(&path)?, 0o100000 | (meta.permissions().mode() & 0o7777))
        };
        entry(&mut w, ino, mode, meta.nlink().min(1) as u32, &name, &data)?;
    }
    entry(&mut w, 0, 0, 1, "TRAILER!!!", &[])?;
    w.flush()?;
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    let mut children: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let path = child.path();
        let rel = path.strip_prefix(root)?.to_owned();
        out.push(rel);
        if child.file_type()?.is_dir() {
            collect(root, &path, out)?;
        }
    }
    Ok(())
}

fn entry(w: &mut impl Write, ino: u32, mode: u32, nlink: u32, name: &str, data: &[u8]) -> Result<()> {
    let namesize = name.len() + 1;
    write!(
        w,
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}{z:08x}{z:08x}{z:08x}{z:08x}{namesize:08x}{z:08x}",
        uid = 0,
        gid = 0,
        mtime = 0,
        size = data.len(),
        z = 0,
    )?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + namesize)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, len: usize) -> Result<()> {
    let rem = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..rem])?;
    Ok(())
}
