//! Tests of head training: the request chunks, the split, the metrics and the record of trainings.

use super::train::chunks;
use super::trainings::Entry;
use super::*;
use crate::auth::Principal;
use crate::error::ErrorKind;

#[test]
fn training_requests_stay_within_a_small_batch_of_tokens() {
    let len = |n: usize| vec![7u32; n];
    // Long examples: two at a time (a budget of two 256-token inputs).
    let long: Vec<Vec<u32>> = (0..5).map(|_| len(256)).collect();
    assert_eq!(chunks(&long, 512, 64), vec![0..2, 2..4, 4..5]);
    // Short ones: as many as the budget holds, at most max_inputs.
    let short: Vec<Vec<u32>> = (0..100).map(|_| len(10)).collect();
    assert_eq!(chunks(&short, 512, 64), vec![0..51, 51..100]);
    assert_eq!(chunks(&short, 512, 16)[0], 0..16);
    // Mixed, every example once, in order; one over the budget goes alone.
    let mixed = vec![len(10), len(600), len(10), len(500), len(10)];
    let got = chunks(&mixed, 512, 64);
    assert_eq!(got, vec![0..1, 1..2, 2..4, 4..5]);
    assert!(chunks(&[], 512, 64).is_empty());
}

#[test]
fn split_holds_out_the_last_of_each_label() {
    let labels = [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0];
    let (train, held) = split(&labels, 2, 0.2);
    // label 0: 7 examples, round(1.4) = 1 held (index 11); label 1: 5, round(1.0) = 1 (9).
    assert_eq!(held, vec![9, 11]);
    assert_eq!(train.len(), 10);
    let (_, none) = split(&labels, 2, 0.0);
    assert!(none.is_empty());
    // At least one held out, and at least one kept.
    let (train, held) = split(&[0, 0, 1, 1], 2, 0.01);
    assert_eq!((train, held), (vec![0, 2], vec![1, 3]));
}

#[test]
fn finished_trainings_are_forgotten_oldest_first() {
    let t = Trainings::default();
    let training = |i: usize, status| Training {
        id: format!("t{i}"),
        model: "m".into(),
        base_model: "b".into(),
        base_version: "1.0.0".into(),
        status,
        stage: "done",
        progress: 1.0,
        examples: 10,
        classes: vec![],
        version: None,
        metrics: None,
        error: None,
    };
    t.start(training(0, "running"), None).unwrap();
    for i in 1..MAX_KEPT + 10 {
        let mut map = t.map.lock().unwrap();
        let training = training(i, "completed");
        Trainings::insert(
            &mut map,
            &t.order,
            Entry {
                training,
                owner: None,
            },
        );
    }
    assert_eq!(t.map.lock().unwrap().len(), MAX_KEPT);
    assert!(
        t.get("m", "t0", None).is_some(),
        "a running training is kept"
    );
    assert!(t.get("m", "t1", None).is_none() && t.get("m", "t10", None).is_none());
    assert!(t.get("m", &format!("t{}", MAX_KEPT + 9), None).is_some());
    assert!(t.get("other", "t0", None).is_none(), "ids are per model");
    // One running training per model, at most MAX_RUNNING in all.
    let e = t.start(training(1000, "running"), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Conflict);
    let mut other = training(1001, "running");
    other.model = "n".into();
    t.start(other, None).unwrap();
    let mut third = training(1002, "running");
    third.model = "o".into();
    assert_eq!(
        t.start(third, None).unwrap_err().kind,
        ErrorKind::Unavailable
    );
}

#[test]
fn a_training_is_seen_by_its_owner_and_admins_only() {
    let principal = |sub: &str, scopes: &[&str]| Principal {
        sub: sub.into(),
        scopes: scopes.iter().map(|s| s.to_string()).collect(),
        tier: None,
        models: None,
        anonymous: false,
    };
    let t = Trainings::default();
    t.start(
        Training {
            id: "t".into(),
            model: "m".into(),
            base_model: "b".into(),
            base_version: "1.0.0".into(),
            status: "running",
            stage: "embedding",
            progress: 0.0,
            examples: 10,
            classes: vec![],
            version: None,
            metrics: None,
            error: None,
        },
        Some("alice".into()),
    )
    .unwrap();
    let (alice, bob) = (principal("alice", &["train"]), principal("bob", &["train"]));
    let admin = principal("root", &["admin"]);
    assert!(t.get("m", "t", Some(&alice)).is_some());
    assert!(t.get("m", "t", Some(&bob)).is_none(), "another principal's");
    assert!(t.get("m", "t", Some(&admin)).is_some());
    assert!(
        t.get("m", "t", None).is_some(),
        "a server without principals"
    );
}

#[test]
fn metrics_follow_their_definitions() {
    let classes = vec!["a".to_string(), "b".into(), "c".into()];
    let (acc, per) = evaluate(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 1], &classes);
    assert!((acc - 0.6).abs() < 1e-12);
    assert_eq!(per[0].precision, 1.0);
    assert_eq!(per[0].recall, 0.5);
    assert!((per[0].f1 - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(per[1].precision, 0.5);
    assert_eq!(per[1].recall, 1.0);
    assert_eq!((per[2].f1, per[2].support), (0.0, 1));
}
