-- dsevents database schema: the one source of the schema.
--
-- dsevents applies this file when it opens a database whose user_version
-- is older than the version set at the end, inside one transaction.
-- Every statement is idempotent (IF NOT EXISTS, IF EXISTS), so applying it
-- again is harmless, and applying it to an older version brings that up to
-- date.
--
-- Conventions:
--   * Times are ISO-8601 UTC text with milliseconds: 2026-03-01T14:05:09.517Z.
--   * Booleans are 0/1.
--   * Event times are stored twice: the normalized UTC value, and the value
--     as received in a *_text column. DailyStory sends some times without a
--     zone; those are read as UTC. Its "no date" value (1753-01-01, the SQL
--     Server minimum) is stored as NULL beside its text.
--   * Column names are the documented field names in snake_case.

-- One row per accepted HTTP request, whether or not its body could be read.
-- The raw body is the source of truth; the per-kind tables below are
-- derived from it and can be rebuilt with `dsevents replay`.
CREATE TABLE IF NOT EXISTS deliveries (
    id            INTEGER PRIMARY KEY,
    received_at   TEXT    NOT NULL,
    -- The {kind} slug from the URL, also when it is not a known kind.
    kind          TEXT    NOT NULL,
    -- The request body byte for byte; NULL once `dsevents prune` or
    -- `dsevents forget` has removed it.
    body          BLOB,
    body_bytes    INTEGER NOT NULL,
    -- SHA-256 of the body as received; kept when the body is pruned, for
    -- duplicate detection.
    body_sha256   BLOB    NOT NULL,
    content_type  TEXT,
    -- NULL for a delivery received over HTTP; for `dsevents import`, the
    -- file and line (or array element) it came from: 'import FILE:LINE'.
    source        TEXT,
    -- stored: normalized into the kind's table.
    -- quarantined: kept, but the body could not be normalized (see error).
    -- unknown_kind: kept, but the URL names no known kind.
    outcome       TEXT    NOT NULL
                  CHECK (outcome IN ('stored', 'quarantined', 'unknown_kind')),
    error         TEXT,
    -- The contact id found in the body, if any.
    dsid          TEXT,
    -- Set when an identical body of the same kind arrived within the
    -- duplicate window (a retry by DailyStory): the id of the first copy.
    duplicate_of  INTEGER REFERENCES deliveries (id),
    -- When the raw body was removed, and by which command.
    body_removed_at TEXT,
    body_removed_by TEXT
);

-- Every insert adds one entry to each index of deliveries, so it has few,
-- and none with random keys (each such key is a page write of its own).
-- Serves time windows (events --since, prune --older-than), counts by
-- kind, and reading the duplicate window back when serve starts. Retries
-- are found through a map serve keeps in memory, not an index on
-- body_sha256; a contact's deliveries through the kinds' dsid indexes.
CREATE INDEX IF NOT EXISTS deliveries_received ON deliveries (received_at, kind);
-- Schema version 1 had these three in its place.
DROP INDEX IF EXISTS deliveries_kind_received;
DROP INDEX IF EXISTS deliveries_fingerprint;
DROP INDEX IF EXISTS deliveries_dsid;
CREATE INDEX IF NOT EXISTS deliveries_source ON deliveries (source) WHERE source IS NOT NULL;
CREATE INDEX IF NOT EXISTS deliveries_not_stored ON deliveries (outcome, id)
    WHERE outcome <> 'stored';
-- The few deliveries that are retries. The views leave these out through
-- this small index rather than by reading each row of deliveries, whose
-- rows carry the bodies and are spread over most of the file.
CREATE INDEX IF NOT EXISTS deliveries_duplicates ON deliveries (id)
    WHERE duplicate_of IS NOT NULL;

-- Per-kind tables. delivery_id is both the primary key and the link to the
-- raw delivery, so a delivery has at most one normalized row.

CREATE TABLE IF NOT EXISTS contact_updates (
    delivery_id                     INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at                     TEXT NOT NULL,
    dsid                            TEXT,
    email                           TEXT,
    mobile_phone                    TEXT,
    phone                           TEXT,
    first_name                      TEXT,
    last_name                       TEXT,
    salutation                      TEXT,
    title                           TEXT,
    company                         TEXT,
    -- Active, Inactive, Spam or Deleted.
    status                          TEXT,
    opt_out                         INTEGER,
    city                            TEXT,
    region                          TEXT,
    country                         TEXT,
    postal_code                     TEXT,
    address                         TEXT,
    geo_code                        TEXT,
    timezone                        TEXT,
    gender                          INTEGER,
    date_birth                      TEXT,
    date_birth_text                 TEXT,
    date_contact_created            TEXT,
    date_contact_created_text       TEXT,
    timestamp_created               TEXT,
    timestamp_created_text          TEXT,
    date_contact_last_modified      TEXT,
    date_contact_last_modified_text TEXT,
    date_first_seen                 TEXT,
    date_first_seen_text            TEXT,
    date_last_seen                  TEXT,
    date_last_seen_text             TEXT,
    date_last_contacted             TEXT,
    date_last_contacted_text        TEXT,
    account_id                      INTEGER,
    -- The tenant's custom fields as a JSON object.
    extended_properties             TEXT
);
CREATE INDEX IF NOT EXISTS contact_updates_dsid ON contact_updates (dsid, received_at);

-- The body's shape is undocumented: dsevents accepts an array of
-- [exception, original] or an object with exception and original members.
CREATE TABLE IF NOT EXISTS contact_update_failures (
    delivery_id   INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at   TEXT NOT NULL,
    dsid          TEXT,
    -- The exception's Message member.
    error_message TEXT,
    exception     TEXT,
    original      TEXT
);
CREATE INDEX IF NOT EXISTS contact_update_failures_dsid ON contact_update_failures (dsid);

CREATE TABLE IF NOT EXISTS leads_created (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    lead_id     INTEGER,
    dsid        TEXT
);
CREATE INDEX IF NOT EXISTS leads_created_lead ON leads_created (lead_id);
CREATE INDEX IF NOT EXISTS leads_created_dsid ON leads_created (dsid);

CREATE TABLE IF NOT EXISTS lead_status_changes (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    lead_id     INTEGER,
    dsid        TEXT,
    status      TEXT
);
-- Covers lead_status_history, so a lead's history and each change's
-- previous status are read from the index alone.
CREATE INDEX IF NOT EXISTS lead_status_changes_lead
    ON lead_status_changes (lead_id, received_at, delivery_id, status, dsid);
CREATE INDEX IF NOT EXISTS lead_status_changes_dsid ON lead_status_changes (dsid);

CREATE TABLE IF NOT EXISTS contact_status_changes (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT,
    status      TEXT
);
CREATE INDEX IF NOT EXISTS contact_status_changes_dsid ON contact_status_changes (dsid);

CREATE TABLE IF NOT EXISTS link_clicks (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    link_id     TEXT
);
CREATE INDEX IF NOT EXISTS link_clicks_link ON link_clicks (link_id);

CREATE TABLE IF NOT EXISTS text_replies (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT,
    mobile      TEXT,
    message     TEXT
);
CREATE INDEX IF NOT EXISTS text_replies_dsid ON text_replies (dsid);

CREATE TABLE IF NOT EXISTS email_bounces (
    delivery_id       INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at       TEXT NOT NULL,
    dsid              TEXT,
    email             TEXT,
    bounced_at        TEXT,
    date_text         TEXT,
    message_id        TEXT,
    -- 1 when the recipient marked the email as spam.
    is_spam_complaint INTEGER,
    reason            TEXT,
    -- The part of email after the last @, lowercased, for --domain.
    email_domain      TEXT GENERATED ALWAYS AS
                      (CASE WHEN instr(email, '@') > 0
                            THEN lower(substr(email, length(rtrim(email, replace(email, '@', ''))) + 1))
                       END) VIRTUAL
);
CREATE INDEX IF NOT EXISTS email_bounces_received ON email_bounces (received_at);
CREATE INDEX IF NOT EXISTS email_bounces_domain ON email_bounces (email_domain, received_at);
CREATE INDEX IF NOT EXISTS email_bounces_dsid ON email_bounces (dsid);

CREATE TABLE IF NOT EXISTS email_opt_outs (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT,
    email       TEXT
);
CREATE TABLE IF NOT EXISTS sms_opt_outs (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT,
    mobile      TEXT
);
CREATE TABLE IF NOT EXISTS phone_opt_outs (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT
);
CREATE TABLE IF NOT EXISTS email_opt_ins (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT,
    email       TEXT
);
CREATE TABLE IF NOT EXISTS sms_opt_ins (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT,
    mobile      TEXT
);
CREATE TABLE IF NOT EXISTS phone_opt_ins (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    dsid        TEXT
);
CREATE INDEX IF NOT EXISTS email_opt_outs_dsid ON email_opt_outs (dsid);
CREATE INDEX IF NOT EXISTS sms_opt_outs_dsid ON sms_opt_outs (dsid);
CREATE INDEX IF NOT EXISTS phone_opt_outs_dsid ON phone_opt_outs (dsid);
CREATE INDEX IF NOT EXISTS email_opt_ins_dsid ON email_opt_ins (dsid);
CREATE INDEX IF NOT EXISTS sms_opt_ins_dsid ON sms_opt_ins (dsid);
CREATE INDEX IF NOT EXISTS phone_opt_ins_dsid ON phone_opt_ins (dsid);

CREATE TABLE IF NOT EXISTS webform_submissions (
    delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at  TEXT NOT NULL,
    webform_id   TEXT,
    webform_name TEXT,
    lead_id      INTEGER,
    dsid         TEXT
);
CREATE INDEX IF NOT EXISTS webform_submissions_dsid ON webform_submissions (dsid);

CREATE TABLE IF NOT EXISTS segments_created (
    delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at  TEXT NOT NULL,
    segment_id   TEXT,
    name         TEXT,
    description  TEXT,
    segment_type TEXT,
    is_call_list INTEGER
);

CREATE TABLE IF NOT EXISTS segments_updated (
    delivery_id  INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at  TEXT NOT NULL,
    segment_id   TEXT,
    name         TEXT,
    status       TEXT,
    description  TEXT,
    segment_type TEXT,
    is_call_list INTEGER
);

CREATE TABLE IF NOT EXISTS users_created (
    delivery_id INTEGER PRIMARY KEY REFERENCES deliveries (id),
    received_at TEXT NOT NULL,
    email       TEXT,
    user_uid    TEXT
);

-- One row per `dsevents forget` run: when, which kind of identifier, and
-- how many rows it erased. The identifier itself is not recorded.
CREATE TABLE IF NOT EXISTS erasure_requests (
    id              INTEGER PRIMARY KEY,
    requested_at    TEXT NOT NULL,
    identifier_type TEXT NOT NULL CHECK (identifier_type IN ('dsid', 'email', 'mobile')),
    -- JSON object: table name to number of rows erased or blanked.
    erased          TEXT NOT NULL
);

-- Views for the common questions. They leave out duplicate deliveries
-- (retries of a body already received), so a retried opt-out or bounce
-- counts once. A query of your own can do the same with
--   delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
-- which reads only the deliveries_duplicates index.

-- Every opt-out on every channel. address is the email or mobile number
-- the event named (NULL for phone calls).
DROP VIEW IF EXISTS opt_outs;
CREATE VIEW opt_outs AS
SELECT 'email' AS channel, o.delivery_id, o.received_at, o.dsid, o.email AS address
  FROM email_opt_outs o
 WHERE o.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
UNION ALL
SELECT 'sms', o.delivery_id, o.received_at, o.dsid, o.mobile
  FROM sms_opt_outs o
 WHERE o.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
UNION ALL
SELECT 'phone', o.delivery_id, o.received_at, o.dsid, NULL
  FROM phone_opt_outs o
 WHERE o.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL);

-- Every opt-out and opt-in, with action 'opt-out' or 'opt-in'.
DROP VIEW IF EXISTS consent_changes;
CREATE VIEW consent_changes AS
SELECT 'opt-out' AS action, channel, delivery_id, received_at, dsid, address FROM opt_outs
UNION ALL
SELECT 'opt-in', 'email', o.delivery_id, o.received_at, o.dsid, o.email
  FROM email_opt_ins o
 WHERE o.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
UNION ALL
SELECT 'opt-in', 'sms', o.delivery_id, o.received_at, o.dsid, o.mobile
  FROM sms_opt_ins o
 WHERE o.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
UNION ALL
SELECT 'opt-in', 'phone', o.delivery_id, o.received_at, o.dsid, NULL
  FROM phone_opt_ins o
 WHERE o.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL);

-- Each contact's latest consent change per channel: consent is 'opted-out'
-- or 'opted-in'. An opt-in received after an opt-out cancels it. Contacts
-- are keyed by dsid, or by address when the event carried no dsid.
-- The newest change is the one with the greatest received_at, then
-- delivery_id. SQLite fills the other columns of a group from the row with
-- its max() (the bare-column rule of SQLite's SELECT documentation), which
-- is faster here than a window function over every change. Each channel
-- is grouped on its own: three smaller sorts by contact instead of one
-- sort of every change by contact and channel.
DROP VIEW IF EXISTS current_consent;
CREATE VIEW current_consent AS
SELECT contact, channel, dsid, address, consent, changed_at, delivery_id
  FROM (SELECT coalesce(dsid, address) AS contact, 'email' AS channel, dsid, address, consent,
       received_at AS changed_at, delivery_id,
       max(received_at || printf('%020d', delivery_id)) AS newest
  FROM (SELECT 'opted-out' AS consent, delivery_id, received_at, dsid, email AS address
          FROM email_opt_outs
         WHERE delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
        UNION ALL
        SELECT 'opted-in', delivery_id, received_at, dsid, email
          FROM email_opt_ins
         WHERE delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL))
 GROUP BY coalesce(dsid, address)
UNION ALL
SELECT coalesce(dsid, address) AS contact, 'sms' AS channel, dsid, address, consent,
       received_at AS changed_at, delivery_id,
       max(received_at || printf('%020d', delivery_id)) AS newest
  FROM (SELECT 'opted-out' AS consent, delivery_id, received_at, dsid, mobile AS address
          FROM sms_opt_outs
         WHERE delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
        UNION ALL
        SELECT 'opted-in', delivery_id, received_at, dsid, mobile
          FROM sms_opt_ins
         WHERE delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL))
 GROUP BY coalesce(dsid, address)
UNION ALL
SELECT coalesce(dsid, address) AS contact, 'phone' AS channel, dsid, address, consent,
       received_at AS changed_at, delivery_id,
       max(received_at || printf('%020d', delivery_id)) AS newest
  FROM (SELECT 'opted-out' AS consent, delivery_id, received_at, dsid, NULL AS address
          FROM phone_opt_outs
         WHERE delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
        UNION ALL
        SELECT 'opted-in', delivery_id, received_at, dsid, NULL
          FROM phone_opt_ins
         WHERE delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL))
 GROUP BY coalesce(dsid, address));

-- Every lead status change, oldest first per lead, with the status before it
-- (NULL for the first change received). The previous status is looked up
-- in the lead_status_changes_lead index for each row, so a filter on dsid
-- or received_at uses its own index instead of first computing every
-- lead's history.
DROP VIEW IF EXISTS lead_status_history;
CREATE VIEW lead_status_history AS
SELECT s.lead_id, s.dsid,
       (SELECT p.status
          FROM lead_status_changes p
         WHERE p.lead_id IS s.lead_id
           AND (p.received_at, p.delivery_id) < (s.received_at, s.delivery_id)
           AND p.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL)
         ORDER BY p.received_at DESC, p.delivery_id DESC
         LIMIT 1) AS previous_status,
       s.status, s.received_at AS changed_at, s.delivery_id
  FROM lead_status_changes s
 WHERE s.delivery_id NOT IN (SELECT id FROM deliveries WHERE duplicate_of IS NOT NULL);

PRAGMA user_version = 2;
