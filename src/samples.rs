//! One realistic delivery body per event kind, embedded in the binary so
//! that `dsevents simulate` can send them without the source tree.
//!
//! The bodies are the files in `tests/fixtures/samples/`, where a README
//! describes each one and the column values it produces.

/// Returns the sample body of the kind with URL slug `slug`, byte for byte
/// as in its fixture file, or `None` for an unknown slug.
pub fn sample(slug: &str) -> Option<&'static [u8]> {
    macro_rules! fixture {
        ($slug:literal) => {
            include_bytes!(concat!("../tests/fixtures/samples/", $slug, ".json")).as_slice()
        };
    }

    let body = match slug {
        "contact-updated" => fixture!("contact-updated"),
        "contact-update-failed" => fixture!("contact-update-failed"),
        "lead-created" => fixture!("lead-created"),
        "lead-status-changed" => fixture!("lead-status-changed"),
        "contact-status-changed" => fixture!("contact-status-changed"),
        "link-clicked" => fixture!("link-clicked"),
        "text-reply" => fixture!("text-reply"),
        "email-bounced" => fixture!("email-bounced"),
        "email-opt-out" => fixture!("email-opt-out"),
        "sms-opt-out" => fixture!("sms-opt-out"),
        "phone-opt-out" => fixture!("phone-opt-out"),
        "email-opt-in" => fixture!("email-opt-in"),
        "sms-opt-in" => fixture!("sms-opt-in"),
        "phone-opt-in" => fixture!("phone-opt-in"),
        "webform-submitted" => fixture!("webform-submitted"),
        "segment-created" => fixture!("segment-created"),
        "segment-updated" => fixture!("segment-updated"),
        "user-created" => fixture!("user-created"),
        _ => return None,
    };
    Some(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::KINDS;

    #[test]
    fn every_kind_has_a_sample() {
        for kind in KINDS {
            assert!(sample(kind.slug).is_some(), "no sample for {}", kind.slug);
        }
    }

    #[test]
    fn sample_matches_fixture_file() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/samples");
        for kind in KINDS {
            let file = std::fs::read(dir.join(format!("{}.json", kind.slug))).expect("fixture is readable");
            assert_eq!(sample(kind.slug), Some(file.as_slice()), "sample of {}", kind.slug);
        }
    }

    #[test]
    fn unknown_slug_has_no_sample() {
        assert_eq!(sample("email-opened"), None);
        assert_eq!(sample(""), None);
    }
}
