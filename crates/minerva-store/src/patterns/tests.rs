use std::path::PathBuf;

use super::*;
use crate::ModelFormat;
use crate::registry::ModelStatus;

const SEC: UnixMillis = 1000;
const HOUR: UnixMillis = 3600 * SEC;
/// An arbitrary "now", far from the epoch.
const NOW: UnixMillis = 1_800_000_000_000;

fn id(s: &str) -> ModelId {
    ModelId::new(s).unwrap()
}

fn request(model: &str, at: UnixMillis) -> AccessEvent {
    AccessEvent {
        id: id(model),
        at,
        kind: AccessKind::Request,
    }
}

/// `n` requests of `model` spread evenly over `(end - HOUR, end]`.
fn spread(model: &str, n: i64, end: UnixMillis) -> Vec<AccessEvent> {
    (0..n).map(|i| request(model, end - i * HOUR / n.max(1))).collect()
}

fn patterns(events: &[AccessEvent]) -> UsagePatterns {
    UsagePatterns::new(PatternConfig::default(), events)
}

fn ids(recommendations: &[PreloadRecommendation]) -> Vec<&str> {
    recommendations.iter().map(|r| r.id.as_str()).collect()
}

#[test]
fn trend_compares_the_last_window_with_the_one_before() {
    let mut events = Vec::new();
    for (model, previous, recent) in [("rising", 2, 6), ("falling", 6, 2), ("steady", 4, 4), ("rare", 1, 0)] {
        events.extend(spread(model, previous, NOW - HOUR - 1));
        events.extend(spread(model, recent, NOW));
    }
    let usage = patterns(&events).usage(NOW);
    let trend = |m: &str| usage.iter().find(|u| u.id.as_str() == m).unwrap();
    assert_eq!(
        (trend("rising").previous_requests, trend("rising").recent_requests),
        (2, 6)
    );
    assert_eq!(trend("rising").trend, Trend::Increasing);
    assert_eq!(trend("falling").trend, Trend::Decreasing);
    assert_eq!(trend("steady").trend, Trend::Stable);
    assert_eq!(
        trend("rare").trend,
        Trend::Stable,
        "one request is too few to call a trend"
    );
}

#[test]
fn a_model_is_hot_when_it_takes_a_large_share_of_recent_requests() {
    let mut events = spread("chat", 8, NOW);
    events.extend(spread("embed", 1, NOW));
    events.extend(spread("old", 5, NOW - 3 * HOUR));
    let usage = patterns(&events).usage(NOW);
    let heat: Vec<(&str, Heat)> = usage.iter().map(|u| (u.id.as_str(), u.heat)).collect();
    assert_eq!(heat, [("chat", Heat::Hot), ("embed", Heat::Cold), ("old", Heat::Cold)]);
    assert!((usage[0].share - 8.0 / 9.0).abs() < 1e-9);
}

#[test]
fn sequential_recommends_the_model_that_usually_follows_the_last_one() {
    let mut events = Vec::new();
    let mut t = NOW - 10 * HOUR;
    // Four visits of `a` (three requests each) followed by `b` within 10 s, one by `c`.
    for next in ["b", "b", "c", "b", "b"] {
        events.extend([request("a", t), request("a", t + SEC), request("a", t + 2 * SEC)]);
        events.push(request(next, t + 12 * SEC));
        t += HOUR;
    }
    events.push(request("a", NOW - 5 * SEC));
    let p = patterns(&events);
    let recommended = p.recommendations(PreloadStrategy::Sequential, NOW, &[]);
    assert_eq!(ids(&recommended), ["b"], "c followed only once");
    assert!((recommended[0].priority - 0.8).abs() < 1e-9);
    assert!(
        recommended[0]
            .reason
            .contains("followed a within 60 s in 4 of 5 visits"),
        "{}",
        recommended[0].reason
    );
    let followers = p.followers(&id("a"));
    assert_eq!((followers[1].id.as_str(), followers[1].support), ("c", 1));
    assert!(
        p.recommendations(PreloadStrategy::Sequential, NOW + 2 * HOUR, &[])
            .is_empty(),
        "too long after the last request, nothing follows it any more"
    );
}

#[test]
fn sequential_ignores_successors_that_come_too_late() {
    let events: Vec<AccessEvent> = (0..4)
        .flat_map(|i| {
            [
                request("a", NOW - (i + 1) * HOUR),
                request("b", NOW - (i + 1) * HOUR + 5 * 60 * SEC),
            ]
        })
        .chain([request("a", NOW)])
        .collect();
    assert!(
        patterns(&events)
            .recommendations(PreloadStrategy::Sequential, NOW, &[])
            .is_empty()
    );
}

#[test]
fn frequency_ranks_by_share_of_the_last_window() {
    let mut events = spread("a", 2, NOW);
    events.extend(spread("b", 6, NOW));
    events.extend(spread("gone", 9, NOW - 2 * HOUR));
    let recommended = patterns(&events).recommendations(PreloadStrategy::Frequency, NOW, &[]);
    assert_eq!(ids(&recommended), ["b", "a"]);
    assert!((recommended[0].priority - 0.75).abs() < 1e-9);
    assert_eq!(recommended[0].reason, "6 requests in the last 60 min (75 % of all)");
}

#[test]
fn recency_halves_the_priority_every_window() {
    let events = [
        request("old", NOW - HOUR),
        request("new", NOW),
        request("older", NOW - 2 * HOUR),
    ];
    let recommended = patterns(&events).recommendations(PreloadStrategy::Recency, NOW, &[]);
    assert_eq!(ids(&recommended), ["new", "old", "older"]);
    let priorities: Vec<f64> = recommended.iter().map(|r| r.priority).collect();
    assert_eq!(priorities, [1.0, 0.5, 0.25]);
    assert_eq!(recommended[1].reason, "last requested 60 min ago");
}

fn record(model: &str, size_bytes: u64) -> ModelRecord {
    ModelRecord {
        id: id(model),
        path: PathBuf::from(model),
        format: ModelFormat::Gguf,
        architecture: "llama".into(),
        parameter_count: 1,
        quantization: "Q4_0".into(),
        size_bytes,
        modified_ns: 0,
        sha256: String::new(),
        mismatch_sha256: None,
        added_at: 0,
        verified_at: 0,
        status: ModelStatus::Ok,
        access_count: 0,
        last_access: None,
        load_count: 0,
        total_load_ms: 0,
    }
}

#[test]
fn size_puts_the_smallest_model_in_use_first() {
    let events = [request("big", NOW), request("small", NOW - HOUR)];
    let records = [
        record("big", 400_000_000),
        record("small", 100_000_000),
        record("unused", 1),
    ];
    let recommended = patterns(&events).recommendations(PreloadStrategy::Size, NOW, &records);
    assert_eq!(
        ids(&recommended),
        ["small", "big"],
        "models never requested are not preloaded"
    );
    assert_eq!(recommended[1].priority, 0.25);
    assert_eq!(recommended[1].reason, "400.0 MB (smallest model in use: 100.0 MB)");
}

#[test]
fn hot_list_weighs_recent_use_above_old_bulk_and_breaks_ties_by_id() {
    let mut events = spread("yesterday", 40, NOW - 24 * HOUR);
    events.extend(spread("today", 3, NOW));
    events.extend([request("tie-b", NOW - 3 * HOUR), request("tie-a", NOW - 3 * HOUR)]);
    let p = patterns(&events);
    assert_eq!(p.hot_list(NOW, 3), [id("today"), id("tie-a"), id("tie-b")]);
    assert_eq!(p.hot_list(NOW, 1), [id("today")]);
    assert_eq!(p.hot_list(NOW - 23 * HOUR, 1), [id("yesterday")], "as of yesterday");
}

#[test]
fn preloads_and_events_after_now_do_not_count() {
    let events = [
        request("a", NOW),
        AccessEvent {
            id: id("b"),
            at: NOW,
            kind: AccessKind::Preload,
        },
        request("c", NOW + SEC),
    ];
    let usage = patterns(&events).usage(NOW);
    assert_eq!(usage.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["a"]);
    assert_eq!(patterns(&[]).hot_list(NOW, 5), Vec::<ModelId>::new());
}
