//! Property tests of the v2 body reading: arbitrary bytes, with and without
//! `Inference-Header-Content-Length`, and near-valid binary requests with wrong sizes, must end
//! in a request or a 400 — never a panic, never a read past the body.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue};
use proptest::prelude::*;
use serde_json::json;

use super::{parse_body, prepare, HEADER_LENGTH};
use crate::error::ErrorKind;
use crate::registry::Registry;
use crate::serving::tensor::encode_bytes;

const LIMIT: usize = 1 << 20;

fn read(headers: &HeaderMap, body: Vec<u8>) -> Result<usize, ErrorKind> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|_| ErrorKind::Internal)?;
    let (req, binary) = rt
        .block_on(parse_body(headers, Bytes::from(body)))
        .map_err(|e| e.kind)?;
    // No model is registered: a request that passes every check before the lookup is a 404.
    let registry = Registry::new();
    match prepare(&registry, "m", None, headers, req, binary, LIMIT) {
        Ok(p) => Ok(p.serve.inputs.len()),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(usize::MAX),
        Err(e) => Err(e.kind),
    }
}

fn binary_request(texts: &[&str], declared: i64, extra: usize) -> (HeaderMap, Vec<u8>) {
    let raw = encode_bytes(
        &texts
            .iter()
            .map(|t| t.as_bytes().to_vec())
            .collect::<Vec<_>>(),
    );
    let header = json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [texts.len()],
                                     "parameters": {"binary_data_size": declared}}]})
    .to_string();
    let mut h = HeaderMap::new();
    h.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
    let mut body = header.into_bytes();
    body.extend_from_slice(&raw);
    body.extend(std::iter::repeat_n(0u8, extra));
    (h, body)
}

#[test]
fn a_consistent_binary_request_reads() {
    let (h, body) = binary_request(&["a", "bc"], 11, 0);
    assert_eq!(read(&h, body), Ok(usize::MAX));
}

#[test]
fn inconsistent_binary_sizes_are_400() {
    for (declared, extra) in [(10, 0), (12, 0), (11, 1), (-1, 0), (i64::MAX, 0)] {
        let (h, body) = binary_request(&["a", "bc"], declared, extra);
        assert_eq!(
            read(&h, body),
            Err(ErrorKind::InvalidRequest),
            "{declared} {extra}"
        );
    }
    // The header length past the body.
    let (mut h, body) = binary_request(&["a"], 5, 0);
    h.insert(HEADER_LENGTH, HeaderValue::from(body.len() + 1));
    assert_eq!(read(&h, body), Err(ErrorKind::InvalidRequest));
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512),
                                    split in proptest::option::of(0usize..600)) {
        let mut h = HeaderMap::new();
        if let Some(n) = split {
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        if let Err(kind) = read(&h, body) {
            prop_assert_eq!(kind, ErrorKind::InvalidRequest);
        }
    }

    #[test]
    fn wrong_sizes_and_shapes_are_400(n in 0i64..5, declared in -2i64..40, extra in 0usize..8,
                                      dtype in prop::sample::select(vec!["BYTES", "FP32", "INT64"])) {
        let raw = encode_bytes(&[b"hello".to_vec(), b"world".to_vec()]);
        let header = json!({"inputs": [{"name": "text", "datatype": dtype, "shape": [n],
                                         "parameters": {"binary_data_size": declared}}]})
        .to_string();
        let mut h = HeaderMap::new();
        h.insert(HEADER_LENGTH, HeaderValue::from(header.len()));
        let mut body = header.into_bytes();
        body.extend_from_slice(&raw);
        body.extend(std::iter::repeat_n(7u8, extra));
        let ok = n == 2 && declared == 18 && extra == 0 && dtype == "BYTES";
        match read(&h, body) {
            Ok(k) => prop_assert!(ok && k == usize::MAX),
            Err(kind) => {
                prop_assert!(!ok);
                prop_assert_eq!(kind, ErrorKind::InvalidRequest);
            }
        }
    }
}
