//! `Idempotency-Key`s survive a restart on the same data directory, after SIGTERM and after
//! `kill -9` (they are journaled with their usage): the retry gets the same id with
//! `Idempotent-Replayed: true`, another body is still `422`, a keyed bulk cut off before the
//! restart stores its remaining lines on the retry, and nothing is stored twice (`usaged
//! export` lists each usage once, under the id answered).

mod idem;
mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use idem::*;
use util::{Response, Server, get};

const FLAGS: [&str; 2] = ["--threads", "2"];
const BULK_KEY: &str = "\"bulk key\"";

/// Before the restart: a keyed single POST and a keyed bulk, answered, and a keyed bulk cut
/// off (the client closed) after some of its lines were stored.
fn first_requests(s: &Server) -> (Response, Response) {
    let mut c = s.connect();
    let single = c.request(keyed_post("single", &usage("one", 1)));
    first(&single);
    let (body, expect) = bulk_body("many", 200);
    let bulk = c.request(keyed_bulk(BULK_KEY, &body));
    assert_eq!(bulk.header(REPLAYED), None);
    bulk_ids(&bulk, &expect);
    let before = stored(s);
    let (body, _) = bulk_body("cut", 300);
    let cut = body[..body.len() / 2].rfind('\n').unwrap() + 7;
    let mut c = s.connect();
    c.send(keyed_bulk_head("cut", body.len()));
    c.send(&body[..cut]);
    wait_stored(s, before + valid_lines(&body[..cut]));
    c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    (single, bulk)
}

/// After the restart: both replay on several connections (so both workers), another body is
/// `422`, nothing is stored; the cut bulk's retry answers every line; then the journal lists
/// each usage once.
fn replays_after(s: &mut Server, single: &Response, bulk: &Response) {
    let (body, expect) = bulk_body("many", 200);
    let base = stored(s);
    for _ in 0..4 {
        let mut c = s.connect();
        assert_replay(&c.request(keyed_post("single", &usage("one", 1))), single);
        assert_replay(&c.request(keyed_bulk(BULK_KEY, &body)), bulk);
        let r = c.request(keyed_post("single", &usage("one", 2)));
        assert_error(&mut c, &r, 422, REUSED);
    }
    // The bulk's key with one line more, or one line less: another body.
    let mut c = s.connect();
    let longer = format!("{body}{}\n", usage("many", 1000));
    let r = c.request(keyed_bulk(BULK_KEY, &longer));
    assert_error(&mut c, &r, 422, REUSED);
    let shorter = &body[..body[..body.len() - 1].rfind('\n').unwrap() + 1];
    let r = c.request(keyed_bulk(BULK_KEY, shorter));
    assert_error(&mut c, &r, 422, REUSED);
    assert_eq!(stored(s), base, "replays after a restart store nothing");
    let id = created(single);
    assert_eq!(c.request(get(id)).json()["patientId"], "one-1");
    let mut want: BTreeMap<u64, String> = BTreeMap::new();
    want.insert(id, "one-1".to_string());
    for (tag, n, ids) in [
        ("many", 200, bulk_ids(bulk, &expect)),
        ("cut", 300, retry_cut(s)),
    ] {
        assert_eq!(ids.len() as u64, valid_lines(&bulk_body(tag, n).0));
        for &(i, id) in &ids {
            assert_eq!(c.request(get(id)).json()["patientId"], format!("{tag}-{i}"));
            assert!(
                want.insert(id, format!("{tag}-{i}")).is_none(),
                "id {id} twice"
            );
        }
    }
    // A new key is a new usage.
    first(&c.request(keyed_post("new", &usage("one", 3))));
    drop(c);
    assert!(s.stop().success());
    let mut journal: BTreeMap<u64, String> = exported(&s.data_dir).into_iter().collect();
    journal.retain(|_, p| p != "one-3");
    assert_eq!(journal, want, "each usage once, under the id answered");
}

/// The whole cut bulk again with its key: every line answered, then that answer replays.
fn retry_cut(s: &Server) -> Vec<(usize, u64)> {
    let (body, expect) = bulk_body("cut", 300);
    let req = keyed_bulk("cut", &body);
    let r = until_not_409(s, &req, Duration::from_secs(10));
    let ids = bulk_ids(&r, &expect);
    assert_replay(&s.connect().request(req.as_str()), &r);
    ids
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
    let (body, _) = bulk_body("many", 200);
    assert_replay(&c.request(keyed_bulk(BULK_KEY, &body)), &bulk);
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
