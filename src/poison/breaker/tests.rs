use super::*;

fn breakers(cooldown: Duration) -> Arc<Breakers> {
    Arc::new(Breakers::new(BreakerConfig {
        threshold: 0.5,
        window: 100,
        min_messages: 10,
        cooldown,
    }))
}

fn proceed(b: &Arc<Breakers>, partition: i32) -> Option<Probe> {
    match b.admit("t", partition) {
        Admission::Proceed(probe) => probe,
        Admission::Wait(d) => panic!("expected to proceed, told to wait {d:?}"),
    }
}

fn good(b: &Breakers, partition: i32, tenant: &str, n: usize) {
    b.good("t", partition, std::iter::repeat_n(tenant, n), None);
}

/// Poison verdicts until one is refused; how many were allowed.
fn flood(b: &Breakers, partition: i32, tenant: &str, most: usize) -> usize {
    (0..most)
        .take_while(|_| b.poison("t", partition, tenant, None))
        .count()
}

#[test]
fn a_poisoned_stream_opens_it_after_at_most_min_messages_verdicts() {
    let b = breakers(Duration::from_secs(60));
    assert_eq!(flood(&b, 0, "acme", 50), 9, "the tenth verdict opens it");
    assert!(matches!(b.state("t"), State::Open { .. }));
    assert!(matches!(b.admit("t", 0), Admission::Wait(_)));
    assert!(matches!(b.admit("t", 1), Admission::Wait(_)));
    assert_eq!(b.open_topics(), vec!["t".to_string()]);
}

#[test]
fn a_long_good_history_does_not_delay_a_systemic_failure() {
    let b = breakers(Duration::from_secs(60));
    for p in 0..2 {
        good(&b, p, "acme", 500);
        good(&b, p, "globex", 500);
    }
    // Every tenant and every partition fails now.
    let allowed = (0..100)
        .take_while(|i: &usize| {
            b.poison("t", (i % 2) as i32, ["acme", "globex"][(i / 2) % 2], None)
        })
        .count();
    assert!(allowed <= 10, "{allowed} dead letters before opening");
    assert!(matches!(b.state("t"), State::Open { .. }));
}

#[test]
fn poison_of_one_tenant_while_others_are_stored_never_pauses() {
    let b = breakers(Duration::from_secs(60));
    good(&b, 1, "acme", 20);
    // Judged over the window, which still holds acme's good messages.
    assert_eq!(flood(&b, 0, "mallory", 70), 70);
    assert_eq!(b.state("t"), State::Closed);
    assert!(b.open_topics().is_empty());
}

#[test]
fn poison_of_one_partition_while_others_are_stored_opens_that_partition_only() {
    let b = breakers(Duration::from_secs(60));
    good(&b, 1, "acme", 20);
    let allowed = (0..50)
        .take_while(|i| b.poison("t", 0, ["acme", "globex"][i % 2], None))
        .count();
    assert!(allowed < 10);
    assert_eq!(b.state("t"), State::Closed);
    assert!(matches!(b.partition_state("t", 0), State::Open { .. }));
    assert!(matches!(b.admit("t", 0), Admission::Wait(_)));
    assert!(proceed(&b, 1).is_none(), "the other partition goes on");
}

#[test]
fn occasional_poison_passes() {
    let b = breakers(Duration::from_secs(60));
    for _ in 0..50 {
        assert!(b.poison("t", 0, "acme", None));
        good(&b, 0, "acme", 9);
    }
    assert_eq!(b.state("t"), State::Closed);
    let fresh = breakers(Duration::from_secs(60));
    assert_eq!(flood(&fresh, 0, "acme", 9), 9, "too few verdicts to judge");
}

#[test]
fn half_open_lets_one_probe_through_and_only_it_decides() {
    let b = breakers(Duration::ZERO);
    flood(&b, 0, "acme", 50);
    let probe = proceed(&b, 0).expect("a probe");
    assert!(matches!(b.admit("t", 1), Admission::Wait(PROBE_POLL)));
    // A batch that is not the probe neither closes nor reopens it.
    good(&b, 1, "acme", 5);
    assert!(!b.poison("t", 1, "acme", None));
    assert!(matches!(b.state("t"), State::HalfOpen { .. }));
    b.good("t", 0, std::iter::once("acme"), Some(&probe));
    assert_eq!(b.state("t"), State::Closed);
    drop(probe);
    assert_eq!(b.state("t"), State::Closed);
}

#[test]
fn a_poisoned_probe_reopens_it() {
    let b = breakers(Duration::ZERO);
    flood(&b, 0, "acme", 50);
    let probe = proceed(&b, 0).expect("a probe");
    assert!(!b.poison("t", 0, "acme", Some(&probe)));
    assert!(matches!(b.state("t"), State::Open { .. }));
}

#[test]
fn an_abandoned_probe_lets_another_batch_probe() {
    let b = breakers(Duration::ZERO);
    flood(&b, 0, "acme", 50);
    let probe = proceed(&b, 0).expect("a probe");
    drop(probe);
    assert_eq!(b.state("t"), State::HalfOpen { probe: None });
    assert!(proceed(&b, 0).is_some());
}

#[test]
fn an_operators_close_holds_while_the_flood_drains() {
    let b = breakers(Duration::from_secs(3600));
    flood(&b, 0, "acme", 50);
    let hold = Hold {
        until: Instant::now() + Duration::from_secs(3600),
        messages: Some(30),
    };
    assert_eq!(b.close_all(hold), 1);
    assert_eq!(b.state("t"), State::Closed);
    assert_eq!(
        flood(&b, 0, "acme", 30),
        30,
        "held closed for 30 dead letters"
    );
    // The budget is spent: the next flood opens it again.
    assert!(flood(&b, 0, "acme", 50) < 10);
    assert!(matches!(b.state("t"), State::Open { .. }));
}
