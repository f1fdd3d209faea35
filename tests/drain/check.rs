//! After the fact: every 201 reads back, export lists exactly the acknowledged set.

use super::*;

// ---------------------------------------------------------------------------------------------
// After the fact: every 201 reads back, export lists exactly the acknowledged set.

/// Every `(id, patientId)` reads back with that patient (pipelined GETs on one connection).
pub fn read_back(port: u16, acked: &[(u64, String)]) {
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect to read back");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = c.try_clone().unwrap();
    let mut r = BufReader::new(c);
    for chunk in acked.chunks(100) {
        let reqs: String = chunk.iter().map(|(id, _)| get(*id)).collect();
        w.write_all(reqs.as_bytes()).unwrap();
        for (id, pid) in chunk {
            let a = read_response(&mut r).unwrap_or_else(|| panic!("no answer to GET {id}"));
            assert_eq!(a.status, 200, "GET {id}: {}", a.text());
            let j = a.json();
            assert_eq!(j["patientId"], pid.as_str(), "GET {id}: {j}");
            assert_eq!(j["medication"], "Albuterol", "GET {id}: {j}");
        }
    }
}

/// `usaged export` of a stopped server's journal: `id → patientId`, checked to exit 0.
pub fn export(dir: &Path) -> BTreeMap<u64, String> {
    util::export_text(dir)
        .lines()
        .map(|l| {
            let j: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                j["id"].as_u64().unwrap(),
                j["patientId"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// No id twice, and the export of `dir` is exactly `acked`.
pub fn check_journal(dir: &Path, acked: &[(u64, String)], what: &str) {
    let ids: HashSet<u64> = acked.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids.len(), acked.len(), "{what}: an id was given twice");
    let want: BTreeMap<u64, String> = acked.iter().cloned().collect();
    let got = export(dir);
    let extra: Vec<_> = got
        .iter()
        .filter(|(id, _)| !want.contains_key(id))
        .collect();
    let missing: Vec<_> = want
        .iter()
        .filter(|(id, _)| !got.contains_key(id))
        .collect();
    assert!(
        extra.is_empty() && missing.is_empty() && got == want,
        "{what}: export differs from the acknowledged set: {} acknowledged, {} exported, \
         not acknowledged but stored (first 5) {:?}, acknowledged but missing (first 5) {:?}",
        want.len(),
        got.len(),
        &extra[..extra.len().min(5)],
        &missing[..missing.len().min(5)],
    );
}
