//! Codec properties: every frame survives a round trip, every prefix of a
//! frame is "incomplete" (never an error, never a wrong frame), and arbitrary
//! or corrupted bytes are refused without panicking.

use bytes::{Bytes, BytesMut};
use pareco_proto::codec::{self, CodecError, Frame};
use pareco_proto::limits::{MAX_CHUNK, MAX_FRAME, MIN_BLOCK};
use pareco_proto::path::partial_name;
use pareco_proto::stream::{Encoding, StreamMessage, StreamRole};
use pareco_proto::{
    Block, Checksum, Digest, DirAttrs, Entry, Failure, FailureKind, FileCheck, FileContent, FileRead, Kind, Name,
    RelPath, Request, Response, Stat, Timestamp, Xattrs,
};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Name> {
    proptest::collection::vec(any::<u8>().prop_filter("no NUL or slash", |b| *b != 0 && *b != b'/'), 1..20)
        .prop_filter_map("not . or ..", |v| Name::new(&v).ok())
}

fn path() -> impl Strategy<Value = RelPath> {
    proptest::collection::vec(name(), 0..4)
        .prop_map(|names| names.iter().fold(RelPath::root(), |p, n| p.join(n).unwrap()))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

fn digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn transit_checksum() -> impl Strategy<Value = Option<Checksum>> {
    proptest::option::of(any::<u128>().prop_map(Checksum))
}

fn data(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn stat() -> impl Strategy<Value = Stat> {
    let kind = prop_oneof![
        Just(Kind::File),
        Just(Kind::Dir),
        Just(Kind::Symlink),
        Just(Kind::Fifo),
        Just(Kind::Socket),
        Just(Kind::CharDevice),
        Just(Kind::BlockDevice)
    ];
    (
        kind,
        any::<u64>(),
        0u32..=0o7777,
        timestamp(),
        timestamp(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(1u8..=255, 1..30),
    )
        .prop_map(|(kind, size, mode, mtime, ctime, ino, dev, target)| Stat {
            kind,
            size,
            mode,
            mtime,
            ctime,
            ino,
            dev,
            nlink: ino % 7,
            blocks: size / 512,
            uid: (ino % 1000) as u32,
            gid: (dev % 1000) as u32,
            rdev: 0,
            target: (kind == Kind::Symlink).then(|| target.into()),
        })
}

fn failure() -> impl Strategy<Value = Failure> {
    let kind = prop_oneof![
        Just(FailureKind::NotFound),
        Just(FailureKind::NoSpace),
        Just(FailureKind::Changed),
        Just(FailureKind::SymlinkInPath),
        Just(FailureKind::Io),
        Just(FailureKind::Busy)
    ];
    (kind, ".{0,40}").prop_map(|(k, m)| Failure::new(k, m))
}

fn blocks() -> impl Strategy<Value = Vec<Block>> {
    proptest::collection::btree_map(0u32..256, data(512), 0..4)
        .prop_map(|m| m.into_iter().map(|(index, data)| Block { index, data }).collect())
}

fn xattrs() -> impl Strategy<Value = Xattrs> {
    proptest::collection::vec(("user\\.[a-z]{1,20}", data(300)), 0..4)
        .prop_map(|v| v.into_iter().map(|(n, d)| (Bytes::from(n.into_bytes()), d)).collect())
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        path().prop_map(|path| Request::Stat { path }),
        path().prop_map(|path| Request::ListDir { path }),
        (path(), any::<u32>(), 0u64..1 << 30, 1u32 << 20..=1 << 20).prop_map(|(path, offset, len, chunk_size)| {
            Request::HashChunks { path, offset: offset as u64, len, chunk_size }
        }),
        (path(), any::<u64>(), any::<u64>()).prop_map(|(path, offset, len)| Request::DataExtents { path, offset, len }),
        (path(), path()).prop_map(|(path, existing)| Request::MakeLink { path, existing }),
        path().prop_map(|path| Request::DirXattrs { path }),
        (path(), xattrs()).prop_map(|(path, xattrs)| Request::SetXattrs { path, xattrs }),
        (
            path(),
            prop_oneof![Just(Kind::Fifo), Just(Kind::CharDevice), Just(Kind::BlockDevice)],
            0u32..0o7777,
            any::<u64>(),
            timestamp()
        )
            .prop_map(|(path, kind, mode, rdev, mtime)| Request::MakeSpecial { path, kind, mode, rdev, mtime }),
        (path(), proptest::option::of(any::<u32>()), proptest::option::of(any::<u32>()))
            .prop_map(|(path, uid, gid)| Request::SetOwner { path, uid, gid }),
        (path(), any::<u64>(), 0u32..=1 << 20).prop_map(|(path, offset, len)| Request::HashBlocks {
            path,
            offset,
            len,
            block_size: 4096
        }),
        (path(), any::<u64>(), 0u32..=1 << 24).prop_map(|(path, offset, len)| Request::ReadData { path, offset, len }),
        (path(), any::<u64>(), proptest::collection::vec(digest(), 0..8)).prop_map(|(path, offset, dest_blocks)| {
            Request::ReadPatch { path, offset, len: 1 << 20, block_size: 4096, dest_blocks }
        }),
        (path(), any::<u64>(), transit_checksum(), data(3000))
            .prop_map(|(path, offset, checksum, data)| Request::WriteData { path, offset, checksum, data }),
        (path(), any::<u64>(), digest(), blocks()).prop_map(|(path, offset, chunk_digest, blocks)| {
            Request::ApplyPatch { path, offset, len: 1 << 20, block_size: 4096, chunk_digest, blocks }
        }),
        (proptest::collection::vec(path(), 0..5), 0u32..65536)
            .prop_map(|(paths, max_size)| Request::ReadFiles { paths, max_size }),
        (
            proptest::collection::vec(
                (path(), 0u32..=0o7777, proptest::option::of(timestamp()), transit_checksum(), data(100)),
                1..4
            ),
            proptest::collection::vec((path(), 0u32..=0o7777, timestamp()), 0..2)
        )
            .prop_map(|(files, dirs)| {
                Request::WriteFiles {
                    files: files
                        .into_iter()
                        .map(|(path, mode, mtime, checksum, data)| FileContent { path, mode, mtime, checksum, data })
                        .collect(),
                    dirs: dirs.into_iter().map(|(path, mode, mtime)| DirAttrs { path, mode, mtime }).collect(),
                }
            }),
        (path(), any::<u64>()).prop_map(|(path, claim)| Request::PrepareFile { path, claim }),
        (path(), any::<u64>()).prop_map(|(path, claim)| Request::Release { path, claim }),
        (path(), any::<u64>()).prop_map(|(path, claim)| Request::Renew { path, claim }),
        (
            path(),
            any::<u64>(),
            0u32..=0o7777,
            proptest::option::of(timestamp()),
            proptest::option::of(path()),
            proptest::option::of((path(), 0u32..=0o7777, timestamp())),
            proptest::option::of((MIN_BLOCK..=MAX_CHUNK, digest())),
        )
            .prop_map(|(path, size, mode, mtime, place_at, dir, check)| Request::FinishFile {
                path,
                size,
                mode,
                mtime,
                place_at,
                dir: dir.map(|(path, mode, mtime)| DirAttrs { path, mode, mtime }),
                check: check.map(|(chunk_size, digest)| FileCheck { chunk_size, digest }),
            }),
        (path(), proptest::option::of(0u32..=0o7777), proptest::option::of(timestamp()))
            .prop_map(|(path, mode, mtime)| Request::Unshare { path, mode, mtime }),
        (path(), any::<u64>(), 0u64..65535, 8u32..=18).prop_map(|(path, offset, pieces, bits)| Request::Pieces {
            path,
            offset,
            len: pieces * (1 << (bits - 2)),
            avg: 1 << bits
        }),
        (path(), path(), proptest::collection::vec((0u64..1 << 40, 0u64..1 << 40, 0u64..1 << 30), 0..5)).prop_map(
            |(path, from, r)| Request::CopyRanges {
                path,
                from,
                ranges: r.into_iter().map(|(to, from, len)| pareco_proto::CopyRange { to, from, len }).collect()
            }
        ),
        (path(), proptest::collection::vec((0u64..1 << 40, 0u64..4096), 0..5))
            .prop_map(|(path, r)| Request::ReadRanges { path, ranges: r.into_iter().map(|(s, l)| s..s + l).collect() }),
        (path(), proptest::collection::vec((0u64..1 << 40, 0u64..64), 0..5)).prop_map(|(path, r)| {
            let ranges: Vec<_> = r.into_iter().map(|(s, l)| s..s + l).collect();
            let data = Bytes::from(vec![7u8; ranges.iter().map(|r| (r.end - r.start) as usize).sum()]);
            Request::WriteRanges { path, ranges, checksum: Some(Checksum::of(&data)), data }
        }),
        proptest::collection::vec((proptest::collection::vec(path(), 1..3), path(), 0u64..5000, 0u32..=0o7777), 0..3)
            .prop_map(|files| Request::CloneFiles {
                files: files
                    .into_iter()
                    .map(|(from, path, size, mode)| pareco_proto::CloneFile {
                        from,
                        path,
                        size,
                        chunk_size: 1024,
                        digests: vec![Digest::of(b"x"); size.div_ceil(1024) as usize],
                        mode,
                        mtime: None,
                    })
                    .collect()
            }),
        (path(), 0u32..=0o7777).prop_map(|(path, mode)| Request::EnsureDir { path, mode }),
        (path(), 0u32..=0o7777, any::<bool>()).prop_map(|(path, mode, _)| Request::MakeDir { path, mode }),
        (path(), proptest::collection::vec(1u8..=255, 1..50), proptest::option::of(timestamp()))
            .prop_map(|(path, t, mtime)| Request::MakeSymlink { path, target: t.into(), mtime }),
        path().prop_map(|path| Request::Remove { path }),
        path().prop_map(|path| Request::Unlink { path }),
        (path(), proptest::option::of(0u32..=0o7777), proptest::option::of(timestamp()))
            .prop_map(|(path, mode, mtime)| Request::SetAttrs { path, mode, mtime }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        Just(Response::Done),
        (proptest::option::of(stat()), timestamp()).prop_map(|(stat, now)| Response::Stat { stat, now }),
        (
            proptest::collection::vec((name(), stat()), 0..5),
            proptest::collection::vec((name(), stat()), 0..3),
            timestamp(),
            any::<bool>()
        )
            .prop_map(|(es, ps, now, more)| Response::Listing {
                entries: es.into_iter().map(|(name, stat)| Entry { name, stat }).collect(),
                partials: ps.into_iter().map(|(name, stat)| Entry { name: partial_name(&name), stat }).collect(),
                now,
                more
            }),
        proptest::collection::vec(digest(), 0..10).prop_map(Response::Digests),
        proptest::collection::vec((1u32..1 << 20, any::<u64>()), 0..10).prop_map(|p| {
            Response::Pieces(p.into_iter().map(|(len, digest)| pareco_proto::Piece { len, digest }).collect())
        }),
        proptest::collection::vec((name(), xattrs()), 0..4).prop_map(Response::DirXattrs),
        proptest::collection::vec((1u64..1 << 40, 1u64..1 << 40), 0..10).prop_map(|gaps| {
            let mut at = 0;
            Response::Extents(
                gaps.into_iter()
                    .map(|(hole, len)| {
                        at += hole;
                        at += len;
                        at - len..at
                    })
                    .collect(),
            )
        }),
        (transit_checksum(), data(5000)).prop_map(|(checksum, data)| Response::Data { checksum, data }),
        (digest(), blocks()).prop_map(|(chunk_digest, blocks)| Response::Patch { chunk_digest, blocks }),
        proptest::collection::vec(
            prop_oneof![
                (stat(), timestamp(), any::<bool>(), transit_checksum(), data(100)).prop_map(
                    |(stat, now, stable, checksum, data)| FileRead::Content { stat, now, stable, checksum, data }
                ),
                stat().prop_map(FileRead::NotSmall),
                failure().prop_map(FileRead::Failed),
            ],
            0..4
        )
        .prop_map(Response::Files),
        proptest::collection::vec(proptest::option::of(failure()), 0..5)
            .prop_map(|v| Response::Outcomes(v.into_iter().map(|f| f.map_or(Ok(()), Err)).collect())),
        failure().prop_map(Response::Failed),
    ]
}

fn stream_message() -> impl Strategy<Value = StreamMessage> {
    let role = prop_oneof![Just(StreamRole::Sender), Just(StreamRole::Receiver)];
    prop_oneof![
        (any::<[u8; 16]>(), role, any::<u64>()).prop_map(|(stream, role, window)| StreamMessage::Join {
            stream,
            role,
            window
        }),
        (any::<[u8; 16]>(), any::<u64>()).prop_map(|(stream, window)| StreamMessage::Joined { stream, window }),
        (any::<u64>(), data(3000)).prop_map(|(seq, payload)| StreamMessage::Data {
            seq,
            raw_len: payload.len() as u32,
            encoding: Encoding::Raw,
            payload
        }),
        (any::<u64>(), 0u32..1 << 20, data(3000)).prop_map(|(seq, raw_len, payload)| StreamMessage::Data {
            seq,
            raw_len,
            encoding: Encoding::Zstd,
            payload
        }),
        any::<u64>().prop_map(|seq| StreamMessage::Ack { seq }),
        (any::<u64>(), any::<u64>(), digest()).prop_map(|(frames, bytes, digest)| StreamMessage::End {
            frames,
            bytes,
            digest
        }),
        Just(StreamMessage::Done),
        ".{0,40}".prop_map(|reason| StreamMessage::Abort { reason }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u32>(), request()).prop_map(|(id, request)| Frame::Request { id, request }),
        (any::<u32>(), response()).prop_map(|(id, response)| Frame::Response { id, response }),
        stream_message().prop_map(Frame::Stream),
        Just(Frame::Working),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn frames_round_trip(f in frame()) {
        let bytes = codec::encode_to_vec(&f);
        let mut buf = BytesMut::from(&bytes[..]);
        let decoded = codec::decode(&mut buf).unwrap().unwrap();
        prop_assert_eq!(decoded, f);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn every_strict_prefix_is_incomplete(f in frame(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode_to_vec(&f);
        let n = cut.index(bytes.len());
        let mut buf = BytesMut::from(&bytes[..n]);
        prop_assert_eq!(codec::decode(&mut buf).unwrap(), None);
        prop_assert_eq!(buf.len(), n);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = codec::decode(&mut buf) {}
    }

    #[test]
    fn corrupted_frames_never_panic(f in frame(), pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = codec::encode_to_vec(&f);
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = codec::decode(&mut buf);
    }
}

#[test]
fn two_frames_in_one_buffer_decode_in_order() {
    let a = Frame::Request { id: 1, request: Request::Stat { path: RelPath::new(b"a").unwrap() } };
    let b = Frame::Response { id: 1, response: Response::Done };
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&codec::encode_to_vec(&a));
    buf.extend_from_slice(&codec::encode_to_vec(&b));
    assert_eq!(codec::decode(&mut buf).unwrap(), Some(a));
    assert_eq!(codec::decode(&mut buf).unwrap(), Some(b));
    assert_eq!(codec::decode(&mut buf).unwrap(), None);
}

#[test]
fn oversized_length_prefix_is_refused_before_allocating() {
    let mut buf = BytesMut::from(&((MAX_FRAME as u32) + 1).to_le_bytes()[..]);
    assert_eq!(codec::decode(&mut buf), Err(CodecError::TooLarge(MAX_FRAME as u64 + 1)));
    assert!(buf.capacity() < 1 << 20);
    // An HTTP request is recognised as garbage at once.
    let mut http = BytesMut::from(&b"GET / HTTP/1.1\r\n\r\n"[..]);
    assert!(matches!(codec::decode(&mut http), Err(CodecError::TooLarge(_))));
}

#[test]
fn paths_that_escape_are_refused_by_the_decoder() {
    for evil in [&b"../etc/passwd"[..], b"/etc/passwd", b"a/../../b", b"a\0b"] {
        // Hand-craft a Stat request with a raw, unvalidated path.
        let mut body = vec![6u8, 0, 1, evil.len() as u8];
        body.extend_from_slice(evil);
        let mut buf = BytesMut::from(&(body.len() as u32).to_le_bytes()[..]);
        buf.extend_from_slice(&body);
        assert!(matches!(codec::decode(&mut buf), Err(CodecError::Path(_))), "{evil:?}");
    }
}

#[test]
fn forged_counts_are_refused() {
    // A ReadPatch claiming a million block digests in a 60-byte frame.
    let mut body = vec![6u8, 0, 6, 1, b'f', 0, 0x80, 0x80, 0x40, 0x80, 0x20, 0xc0, 0x84, 0x3d];
    body.extend_from_slice(&[0; 40]);
    let mut buf = BytesMut::from(&(body.len() as u32).to_le_bytes()[..]);
    buf.extend_from_slice(&body);
    assert!(matches!(codec::decode(&mut buf), Err(CodecError::Invalid(_))));
}

#[test]
fn a_path_sharing_the_start_of_the_one_before_is_checked_whole() {
    // WriteFiles: "a/b", then a path sharing `shared` bytes of it and ending in `rest`.
    let frame = |shared: u8, rest: &[u8]| {
        let mut body = vec![6u8, 0, 10, 2, 0, 3, b'a', b'/', b'b', 0xa4, 0x03, 0, 0, 0, shared, rest.len() as u8];
        body.extend_from_slice(rest);
        body.extend_from_slice(&[0xa4, 0x03, 0, 0, 0, 0]);
        let mut buf = BytesMut::from(&(body.len() as u32).to_le_bytes()[..]);
        buf.extend_from_slice(&body);
        codec::decode(&mut buf)
    };
    let Ok(Some(Frame::Request { request: Request::WriteFiles { files, .. }, .. })) = frame(2, b"c") else { panic!() };
    assert_eq!(files[1].path, RelPath::new(b"a/c").unwrap());
    assert_eq!(frame(4, b"c"), Err(CodecError::Invalid("shared path length")));
    assert!(matches!(frame(2, b"../x"), Err(CodecError::Path(_))));
}

#[test]
fn a_batch_names_at_most_one_directory_per_file() {
    let file = FileContent {
        path: RelPath::new(b"d/f").unwrap(),
        mode: 0o644,
        mtime: None,
        checksum: None,
        data: Bytes::new(),
    };
    let dir = |name: &[u8]| DirAttrs {
        path: RelPath::new(name).unwrap(),
        mode: 0o755,
        mtime: Timestamp { secs: 1, nanos: 0 },
    };
    let request = Request::WriteFiles { files: vec![file], dirs: vec![dir(b"d"), dir(b"e")] };
    let bytes = codec::encode_to_vec(&Frame::Request { id: 1, request });
    assert_eq!(codec::decode(&mut BytesMut::from(&bytes[..])), Err(CodecError::Invalid("directory count")));
}

#[test]
fn trailing_garbage_is_refused() {
    let mut bytes = codec::encode_to_vec(&Frame::Response { id: 3, response: Response::Done });
    bytes.push(0);
    let len = (bytes.len() - 4) as u32;
    bytes[..4].copy_from_slice(&len.to_le_bytes());
    assert!(codec::decode(&mut BytesMut::from(&bytes[..])).is_err());
}

#[test]
fn extents_must_be_ordered_disjoint_and_non_empty() {
    for bad in [vec![5..10, 8..12], vec![5..10, 1..2], vec![1..2, 3..3]] {
        let bytes = codec::encode_to_vec(&Frame::Response { id: 1, response: Response::Extents(bad.clone()) });
        let mut buf = BytesMut::from(&bytes[..]);
        assert!(codec::decode(&mut buf).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn big_listings_are_split_into_bounded_pages() {
    let stat = Stat { ino: 1, dev: 1, blocks: 8, ..Stat::new(Kind::File, 1) };
    let entries: Vec<Entry> = (0..10_000)
        .map(|i| Entry { name: Name::new(format!("file-{i}").as_bytes()).unwrap(), stat: stat.clone() })
        .collect();
    let partials = vec![Entry { name: partial_name(&entries[0].name), stat: stat.clone() }];
    let listing = Response::Listing {
        entries: entries.clone(),
        partials: partials.clone(),
        now: Timestamp::default(),
        more: false,
    };
    let pages = listing.into_pages(64 << 10);
    assert!(pages.len() > 5);
    let last = pages.len() - 1;
    let (mut all, mut all_partials) = (Vec::new(), Vec::new());
    for (i, page) in pages.into_iter().enumerate() {
        let frame = Frame::Response { id: 1, response: page };
        assert!(codec::encode_to_vec(&frame).len() <= 64 << 10);
        let Frame::Response { response: Response::Listing { entries, partials, more, .. }, .. } = frame else {
            unreachable!()
        };
        assert_eq!(more, i != last, "only the last page says it is the last");
        all.extend(entries);
        all_partials.extend(partials);
    }
    assert_eq!((all, all_partials), (entries, partials));
}

#[test]
fn a_listing_s_partial_files_are_partial_files() {
    let stat = Stat::new(Kind::File, 1);
    let listing = |name: &[u8]| Response::Listing {
        entries: Vec::new(),
        partials: vec![Entry { name: Name::new(name).unwrap(), stat: stat.clone() }],
        now: Timestamp::default(),
        more: false,
    };
    let ok = partial_name(&Name::new(b"f").unwrap());
    let bytes = codec::encode_to_vec(&Frame::Response { id: 1, response: listing(ok.as_bytes()) });
    assert!(codec::decode(&mut BytesMut::from(&bytes[..])).is_ok());
    for name in [&b"f"[..], b".pareco-tmp.12.3", b".pareco-tmp.part.notes"] {
        let bytes = codec::encode_to_vec(&Frame::Response { id: 1, response: listing(name) });
        let refused = codec::decode(&mut BytesMut::from(&bytes[..]));
        assert_eq!(refused, Err(CodecError::Invalid("a partial file's name expected")), "{name:?}");
    }
}

/// A compressed body is framed with its announced size and split off whole
/// (the connection decompresses it); an announced size beyond a frame is
/// refused before anything is allocated, and the plain decoder refuses a
/// compressed frame outright.
#[test]
fn compressed_bodies_are_split_with_their_size_and_bounded() {
    let mut buf = BytesMut::new();
    codec::encode_compressed(5000, b"zstd bytes", &mut buf);
    let tail = codec::encode_to_vec(&Frame::Request { id: 3, request: Request::Stat { path: RelPath::root() } });
    buf.extend_from_slice(&tail);
    let whole = buf.clone();
    for cut in 0..whole.len() - tail.len() {
        let mut part = BytesMut::from(&whole[..cut]);
        assert_eq!(codec::split(&mut part).unwrap(), None, "a prefix of {cut} bytes");
    }
    let body = codec::Body::Compressed { raw_len: 5000, payload: Bytes::from_static(b"zstd bytes") };
    assert_eq!(codec::split(&mut buf).unwrap(), Some(body));
    assert!(matches!(codec::split(&mut buf).unwrap(), Some(codec::Body::Plain(_))), "the next frame is intact");

    let mut huge = BytesMut::new();
    codec::encode_compressed(MAX_FRAME as u32 + 1, b"x", &mut huge);
    assert!(matches!(codec::split(&mut huge.clone()), Err(CodecError::TooLarge(_))));
    assert!(codec::decode(&mut huge).is_err());
    let mut fine = BytesMut::new();
    codec::encode_compressed(10, b"x", &mut fine);
    assert!(matches!(codec::decode(&mut fine), Err(CodecError::Invalid(_))), "not agreed: refused by decode");
}

/// The delta's requests refuse what no well-behaved peer sends: piece sizes
/// FastCDC would choke on, more pieces than one answer holds, bytes that do
/// not fill their ranges, a copy without one digest per chunk.
#[test]
#[allow(clippy::single_range_in_vec_init)] // one range is a list of ranges here
fn delta_requests_out_of_bounds_are_refused() {
    let refused = |request: Request| {
        let bytes = codec::encode_to_vec(&Frame::Request { id: 1, request: request.clone() });
        assert!(codec::decode(&mut BytesMut::from(&bytes[..])).is_err(), "{request:?} accepted");
    };
    let p = RelPath::new(b"f").unwrap();
    for avg in [0, 128, 3000, 512 << 10, u32::MAX] {
        refused(Request::Pieces { path: p.clone(), offset: 0, len: 1, avg });
    }
    refused(Request::Pieces { path: p.clone(), offset: 0, len: 1 << 40, avg: 1024 });
    let data = Bytes::from_static(b"abc");
    refused(Request::WriteRanges {
        path: p.clone(),
        ranges: vec![0..2],
        checksum: Some(Checksum::of(&data)),
        data: data.clone(),
    });
    refused(Request::ReadRanges { path: p.clone(), ranges: vec![0..(MAX_FRAME as u64)] });
    refused(Request::CopyRanges {
        path: p.clone(),
        from: p.clone(),
        ranges: vec![pareco_proto::CopyRange { to: u64::MAX, from: 0, len: 2 }],
    });
    let clone = |size, digests| pareco_proto::CloneFile {
        from: vec![p.clone()],
        path: p.clone(),
        size,
        chunk_size: 1024,
        digests,
        mode: 0o644,
        mtime: None,
    };
    refused(Request::CloneFiles { files: vec![clone(3000, vec![Digest::of(b"x"); 2])] });
    refused(Request::CloneFiles { files: vec![pareco_proto::CloneFile { from: vec![], ..clone(0, vec![]) }] });
    let mut pieces = codec::encode_to_vec(&Frame::Response {
        id: 1,
        response: Response::Pieces(vec![pareco_proto::Piece { len: 0, digest: 1 }]),
    });
    assert!(codec::decode(&mut BytesMut::from(&pieces[..])).is_err(), "an empty piece");
    pieces.truncate(pieces.len() - 3);
    let len = (pieces.len() - 4) as u32;
    pieces[..4].copy_from_slice(&len.to_le_bytes());
    assert!(codec::decode(&mut BytesMut::from(&pieces[..])).is_err(), "a truncated piece");
}
