//! FsTree against real files in temp dirs: every operation, and every way a
//! request could try to reach outside the root.

use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::Path;

use bytes::Bytes;
use pareco_fs::FsTree;
use pareco_proto::{
    Block, Checksum, Digest, DirAttrs, FailureKind, FileContent, FileRead, Kind, RelPath, Request, Response, Timestamp,
};

fn p(s: &str) -> RelPath {
    RelPath::new(s.as_bytes()).unwrap()
}

fn failure(r: Response) -> FailureKind {
    match r {
        Response::Failed(f) => f.kind,
        other => panic!("expected a failure, got {other:?}"),
    }
}

fn setup() -> (tempfile::TempDir, FsTree) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("root")).unwrap();
    let tree = FsTree::open(&dir.path().join("root")).unwrap();
    (dir, tree)
}

fn root(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("root")
}

#[test]
fn a_fifo_where_a_file_was_is_a_change_and_never_waited_on() {
    let (dir, tree) = setup();
    let fifo = root(&dir).join("was-a-file");
    rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0).unwrap();
    let (path, data) = (p("was-a-file"), Bytes::from_static(b"data"));
    let checksum = Some(Checksum::of(&data));
    let requests = [
        Request::ReadData { path: path.clone(), offset: 0, len: 4 },
        Request::HashChunks { path: path.clone(), offset: 0, len: 4, chunk_size: 4 },
        Request::WriteData { path: path.clone(), offset: 0, checksum, data },
    ];
    // (Opening a fifo without O_NONBLOCK would wait here for its other end.)
    for req in requests {
        assert_eq!(failure(tree.execute(&req)), FailureKind::Changed, "{req:?}");
    }
}

#[test]
fn symlinks_inside_the_root_are_never_followed() {
    let (dir, tree) = setup();
    let outside = dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"secret").unwrap();
    symlink(&outside, root(&dir).join("escape")).unwrap();
    symlink(outside.join("secret"), root(&dir).join("secret_link")).unwrap();

    let data = Bytes::from_static(b"evil");
    let attempts = [
        Request::WriteData {
            path: p("escape/planted"),
            offset: 0,
            checksum: Some(Checksum::of(&data)),
            data: data.clone(),
        },
        Request::WriteData {
            path: p("secret_link"),
            offset: 0,
            checksum: Some(Checksum::of(&data)),
            data: data.clone(),
        },
        Request::ReadData { path: p("escape/secret"), offset: 0, len: 6 },
        Request::ReadData { path: p("secret_link"), offset: 0, len: 6 },
        Request::EnsureDir { path: p("escape/d"), mode: 0o755 },
        Request::MakeDir { path: p("escape/d"), mode: 0o755 },
        Request::MakeSymlink { path: p("escape/l"), target: data.clone(), mtime: None },
        Request::Remove { path: p("escape/secret") },
        Request::ListDir { path: p("escape") },
        Request::PrepareFile { path: p("secret_link"), claim: 1 },
        Request::SetAttrs { path: p("escape/secret"), mode: Some(0o777), mtime: None },
    ];
    for req in attempts {
        assert_eq!(failure(tree.execute(&req)), FailureKind::SymlinkInPath, "{req:?}");
    }
    let files =
        vec![FileContent { path: p("escape/f"), mode: 0o644, mtime: None, checksum: Some(Checksum::of(&data)), data }];
    let Response::Outcomes(out) = tree.execute(&Request::WriteFiles { files, dirs: vec![] }) else { panic!() };
    assert_eq!(out[0].as_ref().unwrap_err().kind, FailureKind::SymlinkInPath);

    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 1, "nothing was created outside");
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(std::fs::metadata(outside.join("secret")).unwrap().permissions().mode() & 0o777, 0o644);
    // Removing the link removes the link, not what it points to.
    assert_eq!(tree.execute(&Request::Remove { path: p("escape") }), Response::Done);
    assert!(outside.join("secret").exists());
}

#[test]
fn listing_reports_kinds_and_link_targets() {
    let (dir, tree) = setup();
    let r = root(&dir);
    std::fs::write(r.join("f"), b"hello").unwrap();
    std::fs::create_dir(r.join("d")).unwrap();
    symlink("../../nowhere", r.join("l")).unwrap();
    let Response::Listing { mut entries, .. } = tree.execute(&Request::ListDir { path: RelPath::root() }) else {
        panic!()
    };
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    let kinds: Vec<_> = entries.iter().map(|e| (e.name.to_string(), e.stat.kind)).collect();
    assert_eq!(kinds, vec![("d".into(), Kind::Dir), ("f".into(), Kind::File), ("l".into(), Kind::Symlink)]);
    assert_eq!(entries[1].stat.size, 5);
    assert_eq!(entries[2].stat.target.as_deref(), Some(&b"../../nowhere"[..]));
}

#[test]
fn small_files_are_written_atomically_with_mode_and_mtime() {
    let (dir, tree) = setup();
    let data = Bytes::from_static(b"content");
    let mtime = Timestamp { secs: 1_600_000_000, nanos: 123_456_789 };
    let files = vec![
        FileContent {
            path: p("a"),
            mode: 0o640,
            mtime: Some(mtime),
            checksum: Some(Checksum::of(&data)),
            data: data.clone(),
        },
        FileContent { path: p("bad"), mode: 0o640, mtime: None, checksum: Some(Checksum(0)), data: data.clone() },
    ];
    let Response::Outcomes(out) = tree.execute(&Request::WriteFiles { files, dirs: vec![] }) else { panic!() };
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().kind, FailureKind::Mismatch);
    let m = std::fs::metadata(root(&dir).join("a")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o640, 1_600_000_000, 123_456_789));
    assert!(!root(&dir).join("bad").exists());
    let names: Vec<_> = std::fs::read_dir(root(&dir)).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, vec!["a"], "no temporary file is left behind");
}

/// The directories of a batch get their attributes after its files (so
/// that the files' creation does not move the mtime set): one outcome per
/// file, then one per directory, whatever the files' outcomes.
#[test]
fn a_batch_sets_its_directories_attributes_after_its_files() {
    let (dir, tree) = setup();
    let data = Bytes::from_static(b"content");
    let mtime = Timestamp { secs: 1_500_000_000, nanos: 5 };
    let file = |path: &str| FileContent {
        path: p(path),
        mode: 0o600,
        mtime: None,
        checksum: Some(Checksum::of(&data)),
        data: data.clone(),
    };
    let files = vec![file("new/a"), file("new/b"), FileContent { checksum: Some(Checksum(0)), ..file("new/c") }];
    let dirs =
        vec![DirAttrs { path: p("new"), mode: 0o751, mtime }, DirAttrs { path: p("missing/dir"), mode: 0o755, mtime }];
    let Response::Outcomes(out) = tree.execute(&Request::WriteFiles { files, dirs }) else { panic!() };
    assert_eq!(out.len(), 5);
    assert!(out[0].is_ok() && out[1].is_ok() && out[3].is_ok());
    assert_eq!(out[2].as_ref().unwrap_err().kind, FailureKind::Mismatch);
    assert_eq!(out[4].as_ref().unwrap_err().kind, FailureKind::NotFound);
    let m = std::fs::metadata(root(&dir).join("new")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.mtime(), m.mtime_nsec()), (0o751, 1_500_000_000, 5));
}

#[test]
fn patches_are_verified_before_anything_is_written() {
    let (dir, tree) = setup();
    let original: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
    std::fs::write(root(&dir).join("f"), &original).unwrap();
    let mut wanted = original.clone();
    wanted[5000] ^= 0xff;

    let hash = Request::HashBlocks { path: p("f"), offset: 0, len: 8192, block_size: 4096 };
    let Response::Digests(dst_blocks) = tree.execute(&hash) else { panic!() };
    assert_eq!(dst_blocks.len(), 2);
    let block = Bytes::copy_from_slice(&wanted[4096..]);
    let patch = |chunk_digest| Request::ApplyPatch {
        path: p("f"),
        offset: 0,
        len: 8192,
        block_size: 4096,
        chunk_digest,
        blocks: vec![Block { index: 1, data: block.clone() }],
    };
    assert_eq!(failure(tree.execute(&patch(Digest::of(&original)))), FailureKind::Mismatch);
    assert_eq!(std::fs::read(root(&dir).join("f")).unwrap(), original);
    assert_eq!(tree.execute(&patch(Digest::of(&wanted))), Response::Done);
    assert_eq!(std::fs::read(root(&dir).join("f")).unwrap(), wanted);
}

#[test]
fn reads_report_changes_and_sizes() {
    let (dir, tree) = setup();
    std::fs::write(root(&dir).join("small"), b"abc").unwrap();
    std::fs::write(root(&dir).join("big"), vec![1u8; 100]).unwrap();
    let req = Request::ReadFiles { paths: vec![p("small"), p("big"), p("missing")], max_size: 50 };
    let Response::Files(files) = tree.execute(&req) else { panic!() };
    assert!(matches!(&files[0], FileRead::Content { data, stable: true, .. } if &data[..] == b"abc"));
    assert!(matches!(&files[1], FileRead::NotSmall(s) if s.size == 100));
    assert!(matches!(&files[2], FileRead::Failed(f) if f.kind == FailureKind::NotFound));
    // Reading past the end means the file changed since it was listed.
    assert_eq!(
        failure(tree.execute(&Request::ReadData { path: p("small"), offset: 0, len: 10 })),
        FailureKind::Changed
    );
    // Only whole pieces are digested.
    let hash = Request::HashChunks { path: p("big"), offset: 0, len: 1024, chunk_size: 512 };
    let Response::Digests(d) = tree.execute(&hash) else { panic!() };
    assert!(d.is_empty());
}

#[test]
fn big_files_are_prepared_written_in_place_and_finished() {
    let (dir, tree) = setup();
    let f = root(&dir).join("f");
    std::fs::write(&f, b"old content that is longer").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o444)).unwrap();
    assert!(matches!(
        tree.execute(&Request::PrepareFile { path: p("f"), claim: 1 }),
        Response::Stat { stat: Some(_), .. }
    ));
    let data = Bytes::from_static(b"NEW");
    assert_eq!(
        tree.execute(&Request::WriteData { path: p("f"), offset: 0, checksum: Some(Checksum::of(&data)), data }),
        Response::Done
    );
    let mtime = Timestamp { secs: 1_000_000_000, nanos: 1 };
    assert_eq!(
        tree.execute(&Request::FinishFile {
            path: p("f"),
            size: 3,
            mode: 0o444,
            mtime: Some(mtime),
            place_at: None,
            dir: None,
            check: None,
        }),
        Response::Done
    );
    assert_eq!(std::fs::read(&f).unwrap(), b"NEW");
    let m = std::fs::metadata(&f).unwrap();
    assert_eq!((m.mode() & 0o777, m.mtime(), m.mtime_nsec()), (0o444, 1_000_000_000, 1));
}

#[test]
fn a_new_file_is_written_under_its_partial_name_and_placed_when_finished() {
    let (dir, tree) = setup();
    let (target, part) = (p("new.db"), pareco_proto::path::partial_of(&p("new.db")).unwrap());
    assert!(matches!(
        tree.execute(&Request::PrepareFile { path: part.clone(), claim: 1 }),
        Response::Stat { stat: Some(_), .. }
    ));
    let data = Bytes::from_static(b"complete");
    let write = Request::WriteData { path: part.clone(), offset: 0, checksum: Some(Checksum::of(&data)), data };
    assert_eq!(tree.execute(&write), Response::Done);
    // Hidden while it is being written: not listed, not there by its name;
    // listed apart, as a partial file (and other temporaries not at all).
    std::fs::write(root(&dir).join(".pareco-tmp.1.2"), b"another process's").unwrap();
    let listing = tree.execute(&Request::ListDir { path: RelPath::root() });
    let Response::Listing { entries, partials, .. } = listing else { panic!() };
    assert!(entries.is_empty(), "{entries:?}");
    let names: Vec<_> = partials.iter().map(|e| (e.name.clone(), e.stat.size)).collect();
    assert_eq!(names, [(part.split_last().unwrap().1, 8)]);
    std::fs::remove_file(root(&dir).join(".pareco-tmp.1.2")).unwrap();
    assert!(!root(&dir).join("new.db").exists());
    let mtime = Some(Timestamp { secs: 1_500_000_000, nanos: 7 });
    // Placed, it sets its directory's attributes after (the rename changed its mtime).
    let dir_mtime = Timestamp { secs: 1_400_000_000, nanos: 9 };
    let dir_attrs = pareco_proto::DirAttrs { path: RelPath::root(), mode: 0o750, mtime: dir_mtime };
    let (place_at, dir_attrs) = (Some(target), Some(dir_attrs));
    let finish = Request::FinishFile { path: part, size: 8, mode: 0o640, mtime, place_at, dir: dir_attrs, check: None };
    let dir_attrs_are_set = || {
        let m = std::fs::metadata(root(&dir)).unwrap();
        (m.mode() & 0o7777, m.mtime(), m.mtime_nsec()) == (0o750, 1_400_000_000, 9)
    };
    assert_eq!(tree.execute(&finish), Response::Done);
    assert_eq!(std::fs::read(root(&dir).join("new.db")).unwrap(), b"complete");
    assert_eq!(std::fs::read_dir(root(&dir)).unwrap().count(), 1, "the partial name is gone");
    assert!(dir_attrs_are_set());
    // The same finish again (its answer was lost) succeeds, and sets them
    // again; a different one does not.
    std::fs::write(root(&dir).join("other"), b"").unwrap();
    std::fs::remove_file(root(&dir).join("other")).unwrap();
    assert!(!dir_attrs_are_set());
    assert_eq!(tree.execute(&finish), Response::Done);
    assert!(dir_attrs_are_set());
    let Request::FinishFile { path, mode, mtime, place_at, dir, .. } = finish else { unreachable!() };
    let other = Request::FinishFile { path, size: 9, mode, mtime, place_at, dir, check: None };
    assert_eq!(failure(tree.execute(&other)), FailureKind::NotFound);
}

#[test]
fn a_file_finished_with_a_check_is_placed_only_if_it_holds_what_the_check_says() {
    use std::os::unix::fs::FileExt;
    let (dir, tree) = setup();
    let (target, part) = (p("image"), pareco_proto::path::partial_of(&p("image")).unwrap());
    assert!(matches!(
        tree.execute(&Request::PrepareFile { path: part.clone(), claim: 1 }),
        Response::Stat { stat: Some(_), .. }
    ));
    // More than two threads hash in one turn (64 MiB each), mostly holes, in
    // chunks that do not divide it.
    let size: u64 = (200 << 20) + 1000;
    let file = std::fs::OpenOptions::new().write(true).open(root(&dir).join(part.to_string())).unwrap();
    file.set_len(size).unwrap();
    for at in [0, 70 << 20, 140 << 20, size - 10] {
        file.write_all_at(b"some data!", at).unwrap();
    }
    let chunk = 3 << 19;
    let check_of = |changed_at: Option<u64>| {
        let content = std::fs::read(root(&dir).join(part.to_string())).unwrap();
        let digests: Vec<Digest> = content
            .chunks(chunk as usize)
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.to_vec();
                if let Some(at) = changed_at.filter(|at| at / chunk as u64 == i as u64) {
                    c[(at % chunk as u64) as usize] ^= 1;
                }
                Digest::of(&c)
            })
            .collect();
        pareco_proto::FileCheck::of(chunk, &digests)
    };
    let finish = |check| Request::FinishFile {
        path: part.clone(),
        size,
        mode: 0o640,
        mtime: None,
        place_at: Some(target.clone()),
        dir: None,
        check: Some(check),
    };
    for changed_at in [0, 140 << 20, size - 1] {
        assert_eq!(failure(tree.execute(&finish(check_of(Some(changed_at))))), FailureKind::Mismatch);
        assert!(!root(&dir).join("image").exists(), "not placed");
        let m = std::fs::metadata(root(&dir).join(part.to_string())).unwrap();
        assert_eq!((m.len(), m.mode() & 0o777), (size, 0o600), "left as it was");
    }
    assert_eq!(tree.execute(&finish(check_of(None))), Response::Done);
    assert!(!root(&dir).join(part.to_string()).exists());
    let m = std::fs::metadata(root(&dir).join("image")).unwrap();
    assert_eq!((m.len(), m.mode() & 0o777), (size, 0o640));
}

#[test]
fn copies_into_a_new_file_in_any_order_keep_the_holes_and_copies_over_data_are_exact() {
    use std::io::{Seek, SeekFrom, Write};
    let (dir, tree) = setup();
    let r = root(&dir);
    // Data, an 8 MiB hole, data, another 8 MiB hole, data.
    let mut f = std::fs::File::create(r.join("old")).unwrap();
    for at in [0u64, 8 << 20, 16 << 20] {
        f.seek(SeekFrom::Start(at)).unwrap();
        f.write_all(&[b'x'; 4096]).unwrap();
    }
    drop(f);
    let size = (16 << 20) + 4096;
    std::fs::write(r.join("new"), b"").unwrap();
    let copy = |to, len| Request::CopyRanges {
        path: p("new"),
        from: p("old"),
        ranges: vec![pareco_proto::CopyRange { to, from: to, len }],
    };
    // The second half first (as concurrent requests may come), then the
    // first half into what is by then a hole of the new file.
    assert_eq!(tree.execute(&copy(12 << 20, size - (12 << 20))), Response::Done);
    assert_eq!(tree.execute(&copy(0, 12 << 20)), Response::Done);
    let new = std::fs::metadata(r.join("new")).unwrap();
    assert!(new.blocks() * 512 < 1 << 20, "the holes were filled: {} blocks", new.blocks());
    assert_eq!(std::fs::read(r.join("new")).unwrap(), std::fs::read(r.join("old")).unwrap());
    // Over bytes already there, a hole of the source is written as zeros.
    std::fs::write(r.join("new"), vec![b'y'; size as usize]).unwrap();
    assert_eq!(tree.execute(&copy(0, size)), Response::Done);
    assert_eq!(std::fs::read(r.join("new")).unwrap(), std::fs::read(r.join("old")).unwrap());
}

#[test]
fn a_linked_file_is_given_a_copy_of_its_own_holes_and_all() {
    use std::io::{Seek, SeekFrom, Write};
    let (dir, tree) = setup();
    let r = root(&dir);
    let mut f = std::fs::File::create(r.join("a")).unwrap();
    f.write_all(b"head").unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    f.write_all(b"tail").unwrap();
    drop(f);
    std::fs::hard_link(r.join("a"), r.join("b")).unwrap();
    std::fs::hard_link(r.join("a"), dir.path().join("outside")).unwrap();
    let mtime = Timestamp { secs: 1_234_567_890, nanos: 5 };
    let unshare = Request::Unshare { path: p("b"), mode: Some(0o600), mtime: Some(mtime) };
    let Response::Stat { stat: Some(s), .. } = tree.execute(&unshare) else { panic!() };
    assert_eq!((s.nlink, s.mode, s.mtime, s.size), (1, 0o600, mtime, (8 << 20) + 4));
    assert!(s.blocks * 512 < 1 << 20, "the hole was filled: {} blocks", s.blocks);
    assert_eq!(std::fs::read(r.join("b")).unwrap(), std::fs::read(r.join("a")).unwrap());
    std::fs::write(r.join("b"), b"changed").unwrap();
    assert_eq!(&std::fs::read(dir.path().join("outside")).unwrap()[..4], b"head");
    assert_eq!(std::fs::metadata(r.join("a")).unwrap().nlink(), 2);
    // A file with no other link only gets the mode and mtime (done again: harmless).
    let Response::Stat { stat: Some(again), .. } = tree.execute(&unshare) else { panic!() };
    assert_eq!((again.ino, again.mode), (std::fs::metadata(r.join("b")).unwrap().ino(), 0o600));
    assert_eq!(
        failure(tree.execute(&Request::Unshare { path: p("nope"), mode: None, mtime: None })),
        FailureKind::NotFound
    );
}

#[test]
fn directories_and_links_are_created_replaced_and_removed() {
    let (dir, tree) = setup();
    let r = root(&dir);
    let ensure = |path| tree.execute(&Request::EnsureDir { path, mode: 0o755 });
    assert!(matches!(ensure(p("a/b/c")), Response::Stat { stat: None, .. }));
    assert!(r.join("a/b/c").is_dir());
    assert!(matches!(ensure(p("a/b")), Response::Stat { stat: Some(s), .. } if s.kind == Kind::Dir));
    std::fs::write(r.join("a/f"), b"").unwrap();
    assert!(matches!(ensure(p("a/f")), Response::Stat { stat: Some(s), .. } if s.kind == Kind::File));
    // A new entry's missing parents are made (owner-only until the sync
    // sets their mode), never through what is not a directory.
    assert_eq!(tree.execute(&Request::MakeDir { path: p("x/y"), mode: 0o755 }), Response::Done);
    assert!(r.join("x/y").is_dir());
    assert_eq!(std::fs::metadata(r.join("x")).unwrap().permissions().mode() & 0o777, 0o700);
    let data = Bytes::from_static(b"f");
    let file = FileContent { path: p("n/m/f"), mode: 0o644, mtime: None, checksum: Some(Checksum::of(&data)), data };
    assert_eq!(
        tree.execute(&Request::WriteFiles { files: vec![file], dirs: vec![] }),
        Response::Outcomes(vec![Ok(())])
    );
    assert_eq!(std::fs::read(r.join("n/m/f")).unwrap(), b"f");
    let copy = pareco_proto::CloneFile {
        from: vec![p("n/m/f")],
        path: p("c/d/f"),
        size: 1,
        chunk_size: 1 << 20,
        digests: vec![Digest::of(b"f")],
        mode: 0o644,
        mtime: None,
    };
    assert_eq!(tree.execute(&Request::CloneFiles { files: vec![copy] }), Response::Outcomes(vec![Ok(())]));
    assert_eq!(tree.execute(&Request::MakeLink { path: p("l/f"), existing: p("n/m/f") }), Response::Done);
    assert_eq!(
        (std::fs::read(r.join("c/d/f")).unwrap(), std::fs::read(r.join("l/f")).unwrap()),
        (b"f".to_vec(), b"f".to_vec())
    );
    assert_ne!(failure(tree.execute(&Request::MakeDir { path: p("a/f/y"), mode: 0o755 })), FailureKind::NotFound);
    assert!(r.join("a/f").is_file());
    std::fs::write(r.join("a/file"), b"x").unwrap();
    let t = Bytes::from_static(b"b/c");
    assert_eq!(tree.execute(&Request::MakeSymlink { path: p("a/file"), target: t, mtime: None }), Response::Done);
    assert_eq!(std::fs::read_link(r.join("a/file")).unwrap(), Path::new("b/c"));
    assert_eq!(tree.execute(&Request::Remove { path: p("a") }), Response::Done);
    assert!(!r.join("a").exists());
    assert_eq!(failure(tree.execute(&Request::Remove { path: RelPath::root() })), FailureKind::BadRequest);
}

fn pieces(tree: &FsTree, path: &str, offset: u64, len: u64, avg: u32) -> Vec<pareco_proto::Piece> {
    match tree.execute(&Request::Pieces { path: p(path), offset, len, avg }) {
        Response::Pieces(pieces) => pieces,
        other => panic!("{other:?}"),
    }
}

#[test]
fn content_defined_pieces_come_back_after_an_insertion_and_tile_the_range() {
    let (dir, tree) = setup();
    let old: Vec<u8> = (0..400_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut new = old.clone();
    new.splice(1000..1000, b"inserted".iter().copied());
    std::fs::write(root(&dir).join("old"), &old).unwrap();
    std::fs::write(root(&dir).join("new"), &new).unwrap();
    let (a, b) = (pieces(&tree, "old", 0, 1 << 30, 4096), pieces(&tree, "new", 0, 1 << 30, 4096));
    assert_eq!(a.iter().map(|p| p.len as u64).sum::<u64>(), old.len() as u64, "the file, shorter than asked");
    assert!(a.iter().all(|p| (1024..=16384).contains(&p.len) || p.len as usize == old.len() % 16384));
    let old_digests: std::collections::HashSet<u64> = a.iter().map(|p| p.digest).collect();
    let shared = b.iter().filter(|p| old_digests.contains(&p.digest)).count();
    assert!(shared + 3 >= b.len(), "only the pieces around the insertion differ: {shared} of {}", b.len());
    // A range: the pieces start where asked.
    let part = pieces(&tree, "old", 100_000, 50_000, 1024);
    assert_eq!(part.iter().map(|p| p.len as u64).sum::<u64>(), 50_000);
    let Response::Failed(f) = tree.execute(&Request::Pieces { path: p("nope"), offset: 0, len: 10, avg: 1024 }) else {
        panic!()
    };
    assert_eq!(f.kind, FailureKind::NotFound);
}

#[test]
#[allow(clippy::single_range_in_vec_init)] // one range is a list of ranges here
fn ranges_are_copied_between_files_read_and_written_scattered() {
    let (dir, tree) = setup();
    let r = root(&dir);
    std::fs::write(r.join("old"), b"0123456789abcdefghij").unwrap();
    std::fs::write(r.join("new"), b"").unwrap();
    let ranges =
        vec![pareco_proto::CopyRange { to: 0, from: 10, len: 5 }, pareco_proto::CopyRange { to: 5, from: 0, len: 3 }];
    assert_eq!(tree.execute(&Request::CopyRanges { path: p("new"), from: p("old"), ranges }), Response::Done);
    assert_eq!(std::fs::read(r.join("new")).unwrap(), b"abcde012");
    let beyond = vec![pareco_proto::CopyRange { to: 0, from: 15, len: 10 }];
    assert_eq!(
        failure(tree.execute(&Request::CopyRanges { path: p("new"), from: p("old"), ranges: beyond })),
        FailureKind::Changed
    );
    let Response::Data { checksum, data } =
        tree.execute(&Request::ReadRanges { path: p("old"), ranges: vec![2..4, 12..15] })
    else {
        panic!()
    };
    assert_eq!((&data[..], checksum), (&b"23cde"[..], Some(Checksum::of(b"23cde"))));
    let write = Request::WriteRanges {
        path: p("new"),
        ranges: vec![1..3, 6..9],
        checksum: Some(Checksum::of(b"XYZWV")),
        data: Bytes::from_static(b"XYZWV"),
    };
    assert_eq!(tree.execute(&write), Response::Done);
    // (The failed copy wrote what it could: the file being assembled is only
    // put in place once checked.)
    assert_eq!(std::fs::read(r.join("new")).unwrap(), b"fXYij0ZWV");
    let lying = Request::WriteRanges {
        path: p("new"),
        ranges: vec![0..2],
        checksum: Some(Checksum::of(b"no")),
        data: Bytes::from_static(b"ok"),
    };
    assert_eq!(failure(tree.execute(&lying)), FailureKind::Mismatch);
}

#[test]
fn files_are_made_from_the_candidate_holding_their_content_even_when_names_swap() {
    let (dir, tree) = setup();
    let r = root(&dir);
    let (a, b) = (vec![1u8; 3000], vec![2u8; 3000]);
    std::fs::write(r.join("a"), &a).unwrap();
    std::fs::write(r.join("b"), &b).unwrap();
    let want = |from: &[&str], path: &str, content: &[u8]| pareco_proto::CloneFile {
        from: from.iter().map(|f| p(f)).collect(),
        path: p(path),
        size: content.len() as u64,
        chunk_size: 1024,
        digests: content.chunks(1024).map(Digest::of).collect(),
        mode: 0o640,
        mtime: Some(Timestamp { secs: 1_400_000_000, nanos: 3 }),
    };
    // a and b swap contents; c is a copy of b found as the second candidate;
    // d's content is nowhere.
    let files = vec![
        want(&["b"], "a", &b),
        want(&["a"], "b", &a),
        want(&["a", "b"], "c", &b),
        want(&["a", "b"], "d", &[3u8; 3000]),
    ];
    let Response::Outcomes(outcomes) = tree.execute(&Request::CloneFiles { files }) else { panic!() };
    assert_eq!(outcomes[..3], [Ok(()), Ok(()), Ok(())]);
    assert_eq!(outcomes[3].as_ref().unwrap_err().kind, FailureKind::Mismatch);
    assert_eq!((std::fs::read(r.join("a")).unwrap(), std::fs::read(r.join("b")).unwrap()), (b.clone(), a));
    assert_eq!(std::fs::read(r.join("c")).unwrap(), b);
    assert!(!r.join("d").exists());
    let m = std::fs::metadata(r.join("c")).unwrap();
    assert_eq!((m.mode() & 0o777, m.mtime(), m.mtime_nsec()), (0o640, 1_400_000_000, 3));
    assert_eq!(std::fs::read_dir(&r).unwrap().count(), 3, "no temporaries left");
}

#[test]
fn checksums_go_with_data_unless_the_transit_is_trusted_and_are_required_where_checked() {
    let (dir, checking) = setup();
    let r = root(&dir);
    std::fs::write(r.join("f"), b"content").unwrap();
    let trusting = FsTree::open(&r).unwrap().trust_transit();
    let read = Request::ReadData { path: p("f"), offset: 0, len: 7 };
    let Response::Data { checksum, .. } = checking.execute(&read) else { panic!() };
    assert_eq!(checksum, Some(Checksum::of(b"content")));
    let Response::Data { checksum, data } = trusting.execute(&read) else { panic!() };
    assert_eq!((checksum, &data[..]), (None, &b"content"[..]));
    let Response::Files(files) = trusting.execute(&Request::ReadFiles { paths: vec![p("f")], max_size: 100 }) else {
        panic!()
    };
    assert!(matches!(&files[..], [FileRead::Content { checksum: None, .. }]));

    // Data without a checksum is refused where checksums are checked (a
    // plaintext channel), and nothing of it is written; trusted, it is written.
    let bare = Bytes::from_static(b"CONTENT");
    let write = Request::WriteData { path: p("f"), offset: 0, checksum: None, data: bare.clone() };
    assert_eq!(failure(checking.execute(&write)), FailureKind::Mismatch);
    let ranges = Request::WriteRanges { path: p("f"), ranges: vec![0..7; 1], checksum: None, data: bare.clone() };
    assert_eq!(failure(checking.execute(&ranges)), FailureKind::Mismatch);
    let whole = FileContent { path: p("g"), mode: 0o644, mtime: None, checksum: None, data: bare.clone() };
    let Response::Outcomes(out) = checking.execute(&Request::WriteFiles { files: vec![whole.clone()], dirs: vec![] })
    else {
        panic!()
    };
    assert_eq!(out[0].as_ref().unwrap_err().kind, FailureKind::Mismatch);
    assert_eq!(std::fs::read(r.join("f")).unwrap(), b"content");
    assert!(!r.join("g").exists());
    assert_eq!(trusting.execute(&write), Response::Done);
    assert_eq!(
        trusting.execute(&Request::WriteFiles { files: vec![whole], dirs: vec![] }),
        Response::Outcomes(vec![Ok(())])
    );
    assert_eq!(std::fs::read(r.join("f")).unwrap(), b"CONTENT");
    assert_eq!(std::fs::read(r.join("g")).unwrap(), b"CONTENT");
}

/// A partial file is claimed by the run that prepares it: another run (in
/// this process, as a server's clients are, or in another process) is told
/// it is busy until the file is finished or removed; the claiming run may
/// prepare it again (a retry) and write on.
#[test]
fn a_partial_file_is_written_by_one_run_at_a_time() {
    let (dir, tree) = setup();
    let part = pareco_proto::path::partial_of(&p("big")).unwrap();
    let prepare = |tree: &FsTree, claim| tree.execute(&Request::PrepareFile { path: part.clone(), claim });
    assert!(matches!(prepare(&tree, 7), Response::Stat { stat: Some(_), .. }));
    assert!(matches!(prepare(&tree, 7), Response::Stat { stat: Some(_), .. }), "a retry of the same run");
    assert_eq!(failure(prepare(&tree, 8)), FailureKind::Busy);
    let elsewhere = FsTree::open(&root(&dir)).unwrap();
    assert_eq!(failure(prepare(&elsewhere, 9)), FailureKind::Busy, "another process");
    // Given up by its run (kept for later), it is free at once; not by another.
    let release = |claim| tree.execute(&Request::Release { path: part.clone(), claim });
    assert_eq!(release(8), Response::Done);
    assert_eq!(failure(prepare(&tree, 8)), FailureKind::Busy);
    assert_eq!(release(7), Response::Done);
    assert!(matches!(prepare(&tree, 8), Response::Stat { stat: Some(_), .. }));
    assert_eq!(release(8), Response::Done);
    assert!(matches!(prepare(&tree, 7), Response::Stat { stat: Some(_), .. }));
    // Renewed by its run; another's renewal is refused, and takes nothing.
    let renew = |tree: &FsTree, claim| tree.execute(&Request::Renew { path: part.clone(), claim });
    assert_eq!(renew(&tree, 7), Response::Done);
    assert_eq!(failure(renew(&tree, 8)), FailureKind::Busy);
    assert_eq!(failure(renew(&elsewhere, 9)), FailureKind::Busy, "another process");
    assert_eq!(failure(prepare(&tree, 8)), FailureKind::Busy);
    // Released, a renewal takes it again (a lease that ran out, no one else
    // having taken it); it never creates a file.
    assert_eq!(release(7), Response::Done);
    assert_eq!(renew(&tree, 7), Response::Done);
    assert_eq!(failure(prepare(&tree, 8)), FailureKind::Busy);
    let gone = pareco_proto::path::partial_of(&p("gone")).unwrap();
    assert_eq!(failure(tree.execute(&Request::Renew { path: gone.clone(), claim: 7 })), FailureKind::NotFound);
    assert!(!root(&dir).join(gone.to_string()).exists());
    // Not partial files, and unclaimed preparations, are not held.
    assert!(matches!(tree.execute(&Request::PrepareFile { path: p("f"), claim: 8 }), Response::Stat { .. }));
    assert!(matches!(prepare(&tree, 0), Response::Stat { stat: Some(_), .. }));
    let data = Bytes::from_static(b"whole");
    let write = Request::WriteData { path: part.clone(), offset: 0, checksum: Some(Checksum::of(&data)), data };
    assert_eq!(tree.execute(&write), Response::Done);
    let place_at = Some(p("big"));
    let finish =
        Request::FinishFile { path: part.clone(), size: 5, mode: 0o644, mtime: None, place_at, dir: None, check: None };
    assert_eq!(tree.execute(&finish), Response::Done);
    // Finished: the name is free for the next run, here or elsewhere; and
    // removed, free again.
    assert!(matches!(prepare(&elsewhere, 9), Response::Stat { stat: Some(_), .. }));
    assert_eq!(failure(prepare(&tree, 8)), FailureKind::Busy);
    assert_eq!(elsewhere.execute(&Request::Remove { path: part.clone() }), Response::Done);
    assert!(matches!(prepare(&tree, 8), Response::Stat { stat: Some(_), .. }));
}
