use super::*;
use crate::server::conn::testing::{
    Fixture, HEALTH, MockSock, POST, TIMEOUTS, WORKER_METRICS, statuses,
};

/// Drive connection `index` after a readable event and file its answers in the outbox to wait
/// for journal batch `wait`, as `Worker::drive` and `Worker::settle` do.
fn drive(
    fx: &mut Fixture,
    outbox: &mut Outbox,
    conns: &mut Slab<(MockSock, Conn)>,
    index: usize,
    wait: u64,
) {
    let start = outbox.len();
    let generation = conns.generation(index);
    let (sock, conn) = conns.at_mut(index).expect("open");
    let next = conn.on_ready(sock, &mut fx.ctx_into(outbox.buf()), true);
    assert_eq!(next, Next::Keep);
    conn.held_parts += 1;
    conn.held_bytes += outbox.len() - start;
    outbox.hold(index, generation, wait, start);
}

/// A connection whose client sent `request`, in a fresh or reused slot.
fn open(conns: &mut Slab<(MockSock, Conn)>, request: Vec<u8>) -> usize {
    let (index, _) = conns.reserve();
    let mut sock = MockSock::default();
    sock.input.push_back(request);
    let conn = Conn::new(vec![0; crate::server::conn::DEFAULT_BUF].into_boxed_slice());
    conns.fill(index, (sock, conn));
    index
}

/// Regression: a connection that failed left its answers in the worker's output, and the next
/// connection sent them to its own client. Answers now wait in the outbox for their journal
/// batch, so the failed connection's slot can be reused before they are released; the guard is
/// the generation `deliver` checks (`Slab::get_mut`), without which the new client gets them.
#[test]
fn a_closed_connections_answers_never_reach_the_next_in_its_slot() {
    let (mut fx, mut outbox, mut conns) = (Fixture::new(), Outbox::default(), Slab::default());
    let a = open(&mut conns, POST.repeat(3));
    drive(&mut fx, &mut outbox, &mut conns, a, 1);
    // Its client resets the connection while the answers wait: the worker closes it.
    conns.remove(a);
    let b = open(&mut conns, HEALTH.to_vec());
    assert_eq!(b, a, "the slot is reused");
    drive(&mut fx, &mut outbox, &mut conns, b, 0);

    outbox.set_durable(1);
    let mut ready = Vec::new();
    outbox.take_ready(&mut ready);
    assert_eq!(
        statuses(outbox.bytes(&ready[0])),
        vec!["201"; 3],
        "a's answers"
    );
    let delivered: Vec<_> = ready
        .iter()
        .map(|h| deliver(&mut conns, &outbox, h, 0, &TIMEOUTS, &WORKER_METRICS))
        .collect();
    assert_eq!(delivered, vec![None, Some(Next::Keep)]);
    let (sock, _) = conns.at_mut(b).expect("open");
    assert_eq!(statuses(&sock.written), vec!["200"], "only its own answer");
}

/// Regression (found in review): a `POST` with `Connection: close` and a request pipelined
/// behind it; the `201` waits for the journal past the header timeout. The timeout used to
/// take the waiting request for a slow client and queue a `408` behind the `201`, so the
/// client read `201 … Connection: close` and then a stray `408`. A held answer is our delay,
/// not the client's: the connection waits, and only the `201` goes out.
#[test]
fn a_request_behind_a_held_answer_gets_no_408_while_the_journal_is_slow() {
    let (mut fx, mut outbox, mut conns) = (Fixture::new(), Outbox::default(), Slab::default());
    let post = String::from_utf8(POST.to_vec()).unwrap();
    let closing = post.replacen("Host: x\r\n", "Host: x\r\nConnection: close\r\n", 1);
    let mut request = closing.into_bytes();
    request.extend_from_slice(HEALTH);
    let a = open(&mut conns, request);
    drive(&mut fx, &mut outbox, &mut conns, a, 1);
    let (_, conn) = conns.at_mut(a).expect("open");
    let (at, kind) = conn.deadline();
    assert_eq!(
        kind,
        crate::server::conn::Timeout::Header,
        "the request behind is unread"
    );

    let before = outbox.len();
    let mut ctx = fx.ctx_into(outbox.buf());
    ctx.now_ms = at + 1;
    assert_eq!(conn.on_timeout(&mut ctx), Next::Keep);
    assert_eq!(outbox.len(), before, "no 408 queued behind the held 201");
    assert!(conn.deadline().0 > at, "looked at again later");

    outbox.set_durable(1);
    let mut ready = Vec::new();
    outbox.take_ready(&mut ready);
    for h in &ready {
        deliver(&mut conns, &outbox, h, at + 1, &TIMEOUTS, &WORKER_METRICS);
    }
    let (sock, _) = conns.at_mut(a).expect("still open until its close");
    assert_eq!(statuses(&sock.written), vec!["201"]);
}
