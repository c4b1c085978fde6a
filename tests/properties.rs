//! Property tests: whatever a configuration file or a DNS server sends,
//! sluice answers with an error that says where, never a panic. Inputs are
//! arbitrary bytes and real inputs (the config fixtures, a Consul-like SRV
//! answer) with random bytes flipped, inserted, removed or cut off.

use std::net::Ipv4Addr;
use std::path::Path;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use proptest::prelude::*;
use proptest::sample::Index;
use sluice::config::{Config, Origin, Overrides, Services, catalog_claims};
use sluice::discovery::dns::parse_srv;

const ORIGIN: &str = "fuzz.toml";

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Insert(Index, u8),
    Delete(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Delete),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

/// `base` with one to five random mutations.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(mutation(), 1..6).prop_map(move |mutations| {
        let mut bytes = base.clone();
        for m in mutations {
            match m {
                Mutation::Flip(i, x) if !bytes.is_empty() => {
                    let k = i.index(bytes.len());
                    bytes[k] ^= x;
                }
                Mutation::Insert(i, b) => {
                    let k = i.index(bytes.len() + 1);
                    bytes.insert(k, b);
                }
                Mutation::Delete(i) if !bytes.is_empty() => {
                    bytes.remove(i.index(bytes.len()));
                }
                Mutation::Truncate(i) => bytes.truncate(i.index(bytes.len() + 1)),
                _ => {}
            }
        }
        bytes
    })
}

/// Every fixture, valid and invalid, as the seeds for mutated configs.
fn fixture_texts() -> Vec<Vec<u8>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
    let mut texts = Vec::new();
    for kind in ["valid", "invalid"] {
        for entry in std::fs::read_dir(root.join(kind)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                texts.push(std::fs::read(path).unwrap());
            }
        }
    }
    texts
}

/// Parses `bytes` as a config file: fine, or errors that each say where.
fn check_config(bytes: &[u8]) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(bytes);
    if let Err(e) = Config::parse(&text, ORIGIN, &Overrides::default()) {
        prop_assert!(!e.problems.is_empty());
        for problem in &e.problems {
            prop_assert!(problem.location.starts_with(ORIGIN), "no location in {problem}");
            prop_assert!(problem.to_string().len() < 2048, "a long message: {problem}");
        }
    }
    Ok(())
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

/// What Consul answers for `redis.service.consul. SRV`: two instances, glue.
fn consul_answer() -> Vec<u8> {
    let mut m = Message::new(4242, MessageType::Response, OpCode::Query);
    m.add_query(Query::query(name("redis.service.consul."), RecordType::SRV));
    for (i, port) in [(1u8, 7001u16), (2, 7002)] {
        let target = name(&format!("node{i}.node.dc1.consul."));
        let srv = SRV::new(1, 1, port, target.clone());
        m.add_answer(Record::from_rdata(
            name("redis.service.consul."),
            0,
            RData::SRV(srv),
        ));
        let glue = A::from(Ipv4Addr::new(10, 0, 0, i));
        m.add_additional(Record::from_rdata(target, 0, RData::A(glue)));
    }
    m.to_vec().unwrap()
}

/// Reads `bytes` as an SRV answer: fine, or an error naming the query.
fn check_answer(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(message) = Message::from_vec(bytes) else {
        return Ok(()); // refused by the wire decoder, which is hickory's
    };
    let query = name("redis.service.consul.");
    if let Err(e) = parse_srv(&message, &query) {
        let text = e.to_string();
        prop_assert!(text.contains("redis.service.consul."), "{text}");
    }
    Ok(())
}

/// A service with `tags` in the catalog: the configuration still stands,
/// and each of its claims is a catalog listener or a refusal with a reason.
fn check_catalog(tags: Vec<String>) -> Result<(), TestCaseError> {
    let base = "consul = \"127.0.0.1:8500\"\n[catalog]\nbind = \"127.0.0.1\"\n";
    let config = Config::parse(base, ORIGIN, &Overrides::default()).unwrap();
    let settings = config.catalog.clone().unwrap();
    let services = Services::from([("svc".to_string(), tags.clone())]);
    let claims = catalog_claims(&settings, &services, &[]);
    let claimed: Vec<String> = claims.order.clone();
    let composed = Config::compose(config.sources.with_catalog(claims));
    let composed = composed.map_err(|e| TestCaseError::fail(format!("{tags:?}: {e}")))?;
    for name in claimed {
        let served = composed
            .listeners
            .iter()
            .any(|l| l.name == name && l.origin == Origin::Catalog);
        let refused = composed
            .catalog_refused
            .iter()
            .any(|r| r.service == "svc" && !r.message.is_empty());
        prop_assert!(served || refused, "{tags:?}: {name} neither served nor refused");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_text_is_a_config_or_an_error_that_says_where(text in "\\PC{0,400}") {
        check_config(text.as_bytes())?;
    }

    #[test]
    fn toml_shaped_text_is_a_config_or_an_error_that_says_where(
        text in "([a-z_]{1,12} = (\"[ -~]{0,30}\"|[0-9]{1,25}|true|\\[\"[0-9.:]{0,20}\"\\])\n|\\[listeners\\.[a-z]{1,5}(\\.health)?\\]\n){0,12}"
    ) {
        check_config(text.as_bytes())?;
    }

    #[test]
    fn mutated_fixtures_are_configs_or_errors_that_say_where(
        bytes in prop::sample::select(fixture_texts()).prop_flat_map(mutated)
    ) {
        check_config(&bytes)?;
    }

    #[test]
    fn any_catalog_tags_are_listeners_or_refusals_with_a_reason(
        tags in prop::collection::vec("(sluice\\.(listen|balance|max_connections|udp_replies|backends|[a-z]{1,8})(=[ -~]{0,16})?|[ -~]{0,12})", 0..6)
    ) {
        check_catalog(tags)?;
    }

    #[test]
    fn any_bytes_are_an_answer_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check_answer(&bytes)?;
    }

    #[test]
    fn mutated_consul_answers_are_an_answer_or_an_error(bytes in mutated(consul_answer())) {
        check_answer(&bytes)?;
    }
}
