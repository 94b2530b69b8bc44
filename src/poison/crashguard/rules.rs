//! The crash-counting rules, apart from the filesystem: what a partition's
//! record says, and what the next `begin` makes of it.

/// A single offset that was alone in flight when the process died.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Suspect {
    pub offset: i64,
    pub crashes: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub instance: u64,
    /// `None` once the range ended.
    pub range: Option<(i64, i64)>,
    pub crashes: u32,
    pub suspect: Option<Suspect>,
    /// The range waits on PostgreSQL or backs off: a death now is not its fault.
    pub waiting: bool,
}

/// What `begin` decided: the record to write and what to tell the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub record: Record,
    pub count: u32,
    /// A range left by a process that died, overlapping or not.
    pub found_dead: bool,
}

fn overlaps(a: (i64, i64), b: (i64, i64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The crash-counting rules, apart from the filesystem.
pub fn next_step(previous: Option<Record>, instance: u64, first: i64, last: i64) -> Step {
    let range = (first, last);
    let in_flight = previous.and_then(|p| p.range.map(|r| (p, r)));
    let (crashes, suspect, found_dead) = match in_flight {
        None => (0, None, false),
        // Died while waiting on PostgreSQL or backing off: not the range's doing.
        Some((p, old)) if p.instance != instance && p.waiting => {
            if overlaps(old, range) {
                (p.crashes, p.suspect, false)
            } else {
                (0, None, false)
            }
        }
        Some((p, old)) if p.instance != instance => {
            if overlaps(old, range) {
                (p.crashes.saturating_add(1), convict(p, old), true)
            } else {
                // The partition moved on while this process was down.
                (0, None, true)
            }
        }
        // This process began it and did not end it (a retry): no crash.
        Some((p, old)) if overlaps(old, range) => (p.crashes, p.suspect, false),
        Some(_) => (0, None, false),
    };
    let suspect = suspect.filter(|s| first <= s.offset && s.offset <= last);
    let count = if first == last {
        suspect.map_or(0, |s| s.crashes)
    } else {
        crashes
    };
    Step {
        record: Record {
            instance,
            range: Some(range),
            crashes,
            suspect,
            waiting: false,
        },
        count,
        found_dead,
    }
}

/// After a death with `old` in flight: a single offset alone in flight is the
/// culprit; a wider range convicts no one new.
fn convict(previous: Record, old: (i64, i64)) -> Option<Suspect> {
    if old.0 != old.1 {
        return previous.suspect;
    }
    let before = previous
        .suspect
        .filter(|s| s.offset == old.0)
        .map_or(0, |s| s.crashes);
    Some(Suspect {
        offset: old.0,
        crashes: before.saturating_add(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const DEAD: u64 = 2;

    fn active(instance: u64, first: i64, last: i64, crashes: u32) -> Record {
        Record {
            instance,
            range: Some((first, last)),
            crashes,
            suspect: None,
            waiting: false,
        }
    }

    #[test]
    fn no_record_or_an_ended_one_counts_nothing() {
        assert_eq!(next_step(None, ME, 0, 9).count, 0);
        let ended = Record {
            range: None,
            ..active(DEAD, 0, 9, 3)
        };
        let step = next_step(Some(ended), ME, 0, 9);
        assert_eq!((step.count, step.found_dead), (0, false));
    }

    #[test]
    fn a_death_with_an_overlapping_range_counts() {
        let step = next_step(Some(active(DEAD, 0, 9, 2)), ME, 5, 14);
        assert_eq!(step.count, 3);
        assert!(step.found_dead);
        assert_eq!(step.record.range, Some((5, 14)));
        assert_eq!(step.record.instance, ME);
    }

    #[test]
    fn a_death_with_a_disjoint_range_resets() {
        let step = next_step(Some(active(DEAD, 0, 9, 2)), ME, 10, 19);
        assert_eq!((step.count, step.record.crashes), (0, 0));
    }

    #[test]
    fn a_retry_by_the_same_process_is_no_crash() {
        let step = next_step(Some(active(ME, 0, 9, 2)), ME, 0, 9);
        assert_eq!((step.count, step.found_dead), (2, false));
    }

    #[test]
    fn only_a_message_alone_in_flight_is_convicted() {
        // Isolating a batch that crashed three times: its first message is not
        // to blame for the batch's crashes.
        let isolating = next_step(Some(active(ME, 0, 9, 3)), ME, 0, 0);
        assert_eq!(isolating.count, 0);
        assert_eq!(isolating.record.crashes, 3);

        // The process dies with offset 4 alone in flight, twice.
        let mut record = active(ME, 4, 4, 3);
        for expected in 1..=2 {
            let batch = next_step(
                Some(Record {
                    instance: DEAD,
                    ..record
                }),
                ME,
                4,
                9,
            );
            assert!(batch.count >= 3, "the batch stays isolated");
            let single = next_step(Some(batch.record), ME, 4, 4);
            assert_eq!(single.count, expected);
            record = single.record;
        }
        // Its neighbour is still innocent.
        assert_eq!(next_step(Some(record), ME, 5, 5).count, 0);
    }

    #[test]
    fn a_suspect_outside_the_new_range_is_dropped() {
        let record = Record {
            suspect: Some(Suspect {
                offset: 4,
                crashes: 2,
            }),
            ..active(DEAD, 4, 9, 1)
        };
        assert_eq!(next_step(Some(record), ME, 6, 12).record.suspect, None);
    }

    #[test]
    fn a_death_while_waiting_on_postgres_does_not_count() {
        let waiting = Record {
            waiting: true,
            ..active(DEAD, 0, 9, 2)
        };
        let step = next_step(Some(waiting), ME, 0, 9);
        assert_eq!((step.count, step.found_dead), (2, false));
    }
}
