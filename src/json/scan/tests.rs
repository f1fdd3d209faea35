use super::*;
use proptest::prelude::*;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::Value;

const README: &str = r#"{"patientId":"100","timestamp":"Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)","medication":"Albuterol"}"#;

/// What a scan yields, owned, so results can be compared.
#[derive(Debug, PartialEq)]
enum Out {
    Ok(Result<String, u64>, i64, i16, String),
    Err(JsonError),
}

fn ours(body: &str) -> Out {
    let mut buf = body.as_bytes().to_vec();
    match scan_usage(&mut buf) {
        Ok(u) => Out::Ok(
            match u.patient {
                Patient::Str(s) => Ok(String::from_utf8(s.to_vec()).unwrap()),
                Patient::Num(n) => Err(n),
            },
            u.timestamp.ms,
            u.timestamp.offset_min,
            String::from_utf8(u.medication.to_vec()).unwrap(),
        ),
        Err(e) => Out::Err(e),
    }
}

/// The members of an object in document order, duplicates kept (serde_json's map keeps one).
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = map.next_entry::<String, Value>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// The oracle: serde_json decides what is JSON; API.md's field rules applied to its values.
fn oracle(body: &str) -> Out {
    let Ok(value) = serde_json::from_slice::<Value>(body.as_bytes()) else {
        return Out::Err(JsonError::Syntax);
    };
    if !value.is_object() {
        return Out::Err(JsonError::NotObject);
    }
    let Entries(entries) = serde_json::from_slice(body.as_bytes()).unwrap();
    let (mut patient, mut ts, mut med, mut err) = (None, None, None, None);
    for (k, v) in entries {
        let field = match k.as_str() {
            "patientId" => Field::PatientId,
            "timestamp" => Field::Timestamp,
            "medication" => Field::Medication,
            _ => continue,
        };
        let dup = match field {
            Field::PatientId => patient.is_some(),
            Field::Timestamp => ts.is_some(),
            Field::Medication => med.is_some(),
        };
        let mut problem = dup.then_some(JsonError::Duplicate(field));
        let parsed = match (field, &v) {
            (Field::PatientId | Field::Medication, Value::String(s))
                if (1..=64).contains(&s.len()) =>
            {
                Some(Ok(s.clone()))
            }
            (Field::PatientId, Value::Number(n)) => n.as_u64().filter(|&n| n < 1 << 53).map(Err),
            (Field::Timestamp, Value::String(s)) => crate::time::parse(s.as_bytes())
                .map(|t| Err(t.ms as u64 ^ ((t.offset_min as u16 as u64) << 48))),
            (Field::Timestamp, Value::Number(n)) => n
                .as_i64()
                .and_then(crate::time::from_epoch_ms)
                .map(|t| Err(t.ms as u64 ^ ((t.offset_min as u16 as u64) << 48))),
            _ => None,
        };
        match parsed {
            None => problem = problem.or(Some(JsonError::Invalid(field))),
            Some(p) => match field {
                Field::PatientId => patient = Some(p),
                Field::Timestamp => ts = Some(p),
                Field::Medication => med = Some(p.unwrap()),
            },
        }
        err = err.or(problem);
    }
    if let Some(e) = err {
        return Out::Err(e);
    }
    let Some(patient) = patient else {
        return Out::Err(JsonError::Missing(Field::PatientId));
    };
    let Some(Err(ts)) = ts else {
        return Out::Err(JsonError::Missing(Field::Timestamp));
    };
    let Some(med) = med else {
        return Out::Err(JsonError::Missing(Field::Medication));
    };
    let (ms, off) = ((ts << 16) as i64 >> 16, (ts >> 48) as u16 as i16);
    Out::Ok(patient, ms, off, med)
}

#[test]
fn readme_body() {
    assert_eq!(
        ours(README),
        Out::Ok(
            Ok("100".into()),
            1_478_009_511_000,
            -300,
            "Albuterol".into()
        )
    );
}

#[test]
fn table() {
    use Field::*;
    use JsonError::*;
    let ts = r#""timestamp":"2016-11-01T09:11:51Z""#;
    let rows: &[(&str, Option<JsonError>)] = &[
        (r#"{"patientId":100,"timestamp":0,"medication":"A"}"#, None),
        (
            r#" { "medication" : "A" , "timestamp" : 1 , "patientId" : "x" , "other": [1, {"a": null}] } "#,
            None,
        ),
        (
            r#"{"patient\u0049d":"1","timestamp":0,"medication":"\ud83d\ude00"}"#,
            None,
        ),
        ("", Some(Syntax)),
        ("[1]", Some(NotObject)),
        ("\"x\"", Some(NotObject)),
        ("{", Some(Syntax)),
        (
            r#"{"patientId":"1","timestamp":0,"medication":"A",}"#,
            Some(Syntax),
        ),
        (
            r#"{"patientId":"1","timestamp":0,"medication":"A"} x"#,
            Some(Syntax),
        ),
        (
            r#"{"patientId":"1","timestamp":0,"medication":"\ud800"}"#,
            Some(Syntax),
        ),
        (
            r#"{"patientId":"1","timestamp":0,"medication":"\udc00\ud800"}"#,
            Some(Syntax),
        ),
        (
            "{\"patientId\":\"1\",\"timestamp\":0,\"medication\":\"a\tb\"}",
            Some(Syntax),
        ),
        (
            r#"{"patientId":01,"timestamp":0,"medication":"A"}"#,
            Some(Syntax),
        ),
        (
            r#"{"patientId":"1","patientId":"2","timestamp":0,"medication":"A"}"#,
            Some(Duplicate(PatientId)),
        ),
        (
            r#"{"timestamp":0,"medication":"A"}"#,
            Some(Missing(PatientId)),
        ),
        (
            r#"{"patientId":"1","medication":"A"}"#,
            Some(Missing(Timestamp)),
        ),
        (
            r#"{"patientId":"1","timestamp":0}"#,
            Some(Missing(Medication)),
        ),
        (
            r#"{"patientId":"","timestamp":0,"medication":"A"}"#,
            Some(Invalid(PatientId)),
        ),
        (
            r#"{"patientId":-1,"timestamp":0,"medication":"A"}"#,
            Some(Invalid(PatientId)),
        ),
        (
            r#"{"patientId":1.5,"timestamp":0,"medication":"A"}"#,
            Some(Invalid(PatientId)),
        ),
        (
            r#"{"patientId":9007199254740992,"timestamp":0,"medication":"A"}"#,
            Some(Invalid(PatientId)),
        ),
        (
            r#"{"patientId":true,"timestamp":0,"medication":"A"}"#,
            Some(Invalid(PatientId)),
        ),
        (
            r#"{"patientId":"1","timestamp":"yesterday","medication":"A"}"#,
            Some(Invalid(Timestamp)),
        ),
        (
            r#"{"patientId":"1","timestamp":1.5,"medication":"A"}"#,
            Some(Invalid(Timestamp)),
        ),
        (
            r#"{"patientId":"1","timestamp":0,"medication":null}"#,
            Some(Invalid(Medication)),
        ),
    ];
    for &(body, want) in rows {
        let got = match ours(body) {
            Out::Ok(..) => None,
            Out::Err(e) => Some(e),
        };
        assert_eq!(got, want, "{body}");
        assert_eq!(ours(body), oracle(body), "oracle disagrees on {body}");
    }
    let long = format!(
        r#"{{"patientId":"{}",{ts},"medication":"A"}}"#,
        "é".repeat(32)
    );
    assert!(matches!(ours(&long), Out::Ok(..)), "64 bytes is allowed");
    let long = format!(
        r#"{{"patientId":"{}a",{ts},"medication":"A"}}"#,
        "é".repeat(32)
    );
    assert_eq!(
        ours(&long),
        Out::Err(Invalid(PatientId)),
        "65 bytes is too long"
    );
    let deep = format!(
        r#"{{"x":{}{},"patientId":"1",{ts},"medication":"A"}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    assert_eq!(ours(&deep), Out::Err(Syntax), "nesting is bounded");
}

#[test]
fn invalid_utf8_is_rejected() {
    let mut body = br#"{"patientId":"1","timestamp":0,"medication":"\xff"}"#.to_vec();
    assert_eq!(scan_usage(&mut body), Err(JsonError::Syntax));
}

/// A JSON string literal for `s`, each char randomly raw or `\u`-escaped (pairs for astral).
fn literal(s: &str, escape_mask: u64) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if escape_mask >> (i % 64) & 1 == 1 || (c as u32) < 0x20 || c == '"' || c == '\\' {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

fn arb_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        ("[a-zA-Z0-9 é€😀\\\\\"\n]{0,70}", any::<u64>()).prop_map(|(s, m)| literal(&s, m)),
        any::<u64>().prop_map(|n| (n >> (n % 64)).to_string()),
        (0u64..1 << 54).prop_map(|n| n.to_string()),
        (-100_000i64..100_000, 0u8..4).prop_map(|(n, k)| match k {
            0 => format!("{n}.5"),
            1 => format!("{n}e3"),
            _ => n.to_string(),
        }),
        Just("true".to_string()),
        Just("null".to_string()),
        Just(r#""2016-11-01T09:11:51-05:00""#.to_string()),
        Just(r#""Tue Nov 01 2016 09:11:51 GMT-0500 (CDT)""#.to_string()),
        Just(r#""2016-02-30T09:11:51Z""#.to_string()),
        Just("1478009511000".to_string()),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(inner, 0..3).prop_map(|v| {
                let members: Vec<String> = v
                    .iter()
                    .enumerate()
                    .map(|(i, x)| format!("\"k{i}\":{x}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

fn arb_body() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("\"patientId\"".to_string()),
        Just("\"timestamp\"".to_string()),
        Just("\"medication\"".to_string()),
        Just("\"medicatio\\u006e\"".to_string()),
        Just("\"other\"".to_string()),
    ];
    let ws = prop_oneof![Just(""), Just(" "), Just("\n\t "), Just("\r\n")];
    let member = (key, ws.clone(), arb_value()).prop_map(|(k, w, v)| format!("{k}{w}:{w}{v}"));
    let body = (proptest::collection::vec(member, 0..6), ws)
        .prop_map(|(m, w)| format!("{w}{{{}}}{w}", m.join(",")));
    let mutation = (0u8..6, any::<usize>(), any::<u8>());
    (body, mutation).prop_map(|(body, (kind, at, byte))| {
        let mut b = body.into_bytes();
        let at = at % (b.len() + 1);
        match kind {
            0 if at < b.len() => {
                b.remove(at);
            }
            1 => b.insert(at, byte),
            2 if at < b.len() => b[at] = byte,
            _ => {}
        }
        String::from_utf8_lossy(&b).into_owned()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// The word-at-a-time scan against the obvious byte loop, on bytes biased to the edges.
    #[test]
    fn plain_run_matches_the_naive_loop(
        bytes in proptest::collection::vec(prop_oneof![0x20u8..0x7f, Just(b'"'), Just(b'\\'), Just(0x1f), Just(0x7f), Just(0x80), any::<u8>()], 0..40),
        plain_prefix in 0usize..40,
    ) {
        let mut s = vec![b'a'; plain_prefix];
        s.extend_from_slice(&bytes);
        let naive = s.iter().take_while(|&&b| is_plain(b)).count();
        prop_assert_eq!(plain_run(&s), naive);
    }

    #[test]
    fn agrees_with_serde_json(body in arb_body()) {
        // serde_json rejects numbers beyond f64's range; RFC 8259 lets us accept them.
        let out_of_range = serde_json::from_str::<Value>(&body).err().is_some_and(|e| e.to_string().contains("out of range"));
        prop_assume!(!out_of_range);
        prop_assert_eq!(ours(&body), oracle(&body), "body {:?}", body);
    }

    #[test]
    fn never_panics_on_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut b = bytes;
        let _ = scan_usage(&mut b);
    }
}
