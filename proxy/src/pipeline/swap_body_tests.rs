//! [`super::ScanBody`] over hand-made frames: every split point, no early byte, no copy.

use super::*;
use http_body_util::BodyExt;

const GRANTED: &[u8] = b"ks_granted_placeholder_01";
const OTHER: &[u8] = b"ks_other_placeholder_0002";

fn placeholders() -> Arc<Replacer> {
    Arc::new(
        Replacer::new(vec![
            (GRANTED.to_vec(), Bytes::from_static(b"<value-0>")),
            (OTHER.to_vec(), Bytes::from_static(b"<value-1>")),
        ])
        .unwrap(),
    )
}

fn no_trailers() -> TrailerCheck {
    Box::new(|_| Ok(()))
}

/// A body that yields the given frames one per poll.
struct Frames(VecDeque<Bytes>);

impl Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.get_mut().0.pop_front().map(|b| Ok(Frame::data(b))))
    }
}

async fn run(chunks: &[&[u8]], swap: bool) -> (Result<Vec<u8>, ()>, Option<BodyRefused>) {
    let frames = Frames(chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect());
    let refused = BodyRefusal::default();
    let body = ScanBody::new(
        frames,
        placeholders(),
        vec![SecretId(0)],
        swap,
        refused.clone(),
        no_trailers(),
    );
    let out = body.collect().await.map(|c| c.to_bytes().to_vec());
    (out.map_err(|_| ()), refused.get().cloned())
}

#[tokio::test]
async fn every_split_point_swaps_or_refuses() {
    let granted = [b"a=".as_slice(), GRANTED, b"&b=", GRANTED, b"!"].concat();
    let refused = [b"a=".as_slice(), GRANTED, b"&b=", OTHER, b"!"].concat();
    for i in 0..granted.len() {
        for j in i..granted.len() {
            let parts = [&granted[..i], &granted[i..j], &granted[j..]];
            let (out, why) = run(&parts, true).await;
            assert_eq!(out.unwrap(), b"a=<value-0>&b=<value-0>!", "split {i},{j}");
            assert_eq!(why, None);
            let (out, _) = run(&parts, false).await;
            assert_eq!(out.unwrap(), granted, "scan only, split {i},{j}");
            for swap in [true, false] {
                let parts = [&refused[..i], &refused[i..j], &refused[j..]];
                let (out, why) = run(&parts, swap).await;
                assert!(out.is_err(), "split {i},{j} not refused");
                assert_eq!(
                    why,
                    Some(BodyRefused::Misplaced(Misplaced::NotGranted(vec![
                        SecretId(1)
                    ])))
                );
            }
        }
    }
}

#[tokio::test]
async fn no_part_of_an_ungranted_placeholder_is_emitted() {
    let frames = Frames(
        [b"hello ".as_slice(), &OTHER[..10], &OTHER[10..], b" tail"]
            .into_iter()
            .map(Bytes::copy_from_slice)
            .collect(),
    );
    let mut body = ScanBody::new(
        frames,
        placeholders(),
        vec![SecretId(0)],
        false,
        BodyRefusal::default(),
        no_trailers(),
    );
    let mut emitted = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => emitted.extend_from_slice(f.data_ref().unwrap()),
            Err(_) => break,
        }
    }
    assert_eq!(emitted, b"hello ");
}

#[tokio::test]
async fn frames_without_placeholders_are_passed_without_copying() {
    let big = Bytes::from(vec![b'x'; 64 * 1024]);
    let tail = Bytes::from([b"xx".as_slice(), &GRANTED[..3]].concat());
    let mut body = ScanBody::new(
        Frames([big.clone(), tail, big.clone()].into_iter().collect()),
        placeholders(),
        vec![SecretId(0)],
        true,
        BodyRefusal::default(),
        no_trailers(),
    );
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first.as_ptr(), big.as_ptr(), "a clean frame was copied");
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        &second[..],
        b"xx",
        "a possible placeholder start was not held"
    );
    // The held start joins a small junction; the rest of the big frame is not copied.
    let junction = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&junction[..], &GRANTED[..3]);
    let rest = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(
        rest.as_ptr(),
        big.as_ptr(),
        "the frame after a held tail was copied"
    );
    assert!(body.frame().await.is_none());
}
