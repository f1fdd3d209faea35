//! `Idempotency-Key`s survive a restart on the same data directory, after SIGTERM and after
//! `kill -9` (they are journaled with their usage): the retry gets the same id with
//! `Idempotent-Replayed: true`, nothing is stored twice (`usaged export` lists each usage once).

mod idem;
mod util;

use std::collections::BTreeMap;

use idem::*;
use util::{Response, Server, get};

const FLAGS: [&str; 2] = ["--threads", "2"];

/// Before the restart: a keyed single POST and a keyed bulk, answered.
fn first_requests(s: &Server) -> (Response, Response) {
    let mut c = s.connect();
    let single = c.request(keyed_post("single", &usage("one", 1)));
    first(&single);
    let (body, expect) = bulk_body("many", 200);
    let bulk = c.request(keyed_bulk("\"bulk key\"", &body));
    assert_eq!(bulk.header(REPLAYED), None);
    bulk_ids(&bulk, &expect);
    (single, bulk)
}

/// After the restart: both replay on several connections (so both workers), another body is
/// `422`, nothing is stored; then the journal lists each usage once.
fn replays_after(s: &mut Server, single: &Response, bulk: &Response) {
    let (body, expect) = bulk_body("many", 200);
    let base = stored(s);
    for _ in 0..4 {
        let mut c = s.connect();
        assert_replay(&c.request(keyed_post("single", &usage("one", 1))), single);
        assert_replay(&c.request(keyed_bulk("\"bulk key\"", &body)), bulk);
        let r = c.request(keyed_post("single", &usage("one", 2)));
        assert_error(&mut c, &r, 422, REUSED);
    }
    assert_eq!(stored(s), base, "replays after a restart store nothing");
    let mut c = s.connect();
    let id = created(single);
    assert_eq!(c.request(get(id)).json()["patientId"], "one-1");
    let ids = bulk_ids(bulk, &expect);
    for &(i, id) in &ids {
        assert_eq!(c.request(get(id)).json()["patientId"], format!("many-{i}"));
    }
    // A new key is a new usage.
    first(&c.request(keyed_post("new", &usage("one", 3))));
    drop(c);
    assert!(s.stop().success());
    let mut want: BTreeMap<u64, String> = ids
        .iter()
        .map(|&(i, id)| (id, format!("many-{i}")))
        .collect();
    want.insert(id, "one-1".to_string());
    let mut journal: BTreeMap<u64, String> = exported(&s.data_dir).into_iter().collect();
    journal.retain(|_, p| p != "one-3");
    assert_eq!(journal, want, "each usage once, under the id answered");
}

#[test]
fn keys_replay_after_sigterm_and_restart() {
    let dir = util::temp_data_dir();
    let mut s = Server::start_in(&dir, &FLAGS);
    let (single, bulk) = first_requests(&s);
    assert!(s.stop().success());
    let mut s = Server::start_in(&dir, &FLAGS);
    replays_after(&mut s, &single, &bulk);
    // And once more, after a restart that followed only replays.
    let mut s = Server::start_in(&dir, &FLAGS);
    let mut c = s.connect();
    assert_replay(&c.request(keyed_post("single", &usage("one", 1))), &single);
    drop(c);
    assert!(s.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn keys_replay_after_kill_9_and_restart() {
    let dir = util::temp_data_dir();
    let mut s = Server::start_in(&dir, &FLAGS);
    let (single, bulk) = first_requests(&s);
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let mut s = Server::start_in(&dir, &FLAGS);
    replays_after(&mut s, &single, &bulk);
    let _ = std::fs::remove_dir_all(&dir);
}
