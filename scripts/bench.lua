-- wrk script for scripts/bench: posts DailyStory deliveries of every kind,
-- in a mix weighted toward the frequent events, to /hooks/{kind}.
--
-- Every body carries a unique message id, link id or counter, and contacts
-- come from a pool of 20,000 so that opt-outs, opt-ins and lead changes
-- repeat for the same dsid as they do in a real tenant. The query string
-- token is read from the environment variable BENCH_TOKEN (empty: none).

local token = os.getenv("BENCH_TOKEN") or ""
local suffix = ""
if token ~= "" then
  suffix = "?token=" .. token
end

local contacts = 20000
local domains = { "example.com", "mail.example.org", "example.net", "corp.example", "shop.example.com" }
local statuses = { "New", "Contacted", "Qualified", "Proposal", "Won", "Lost", "Deleted" }

-- Each entry is a kind and its weight. The weights sum to 100.
local mix = {
  { "contact-updated", 18 }, { "link-clicked", 14 }, { "lead-status-changed", 12 },
  { "email-bounced", 10 }, { "email-opt-out", 6 }, { "email-opt-in", 4 },
  { "sms-opt-out", 4 }, { "sms-opt-in", 3 }, { "phone-opt-out", 2 }, { "phone-opt-in", 1 },
  { "text-reply", 6 }, { "lead-created", 6 }, { "webform-submitted", 5 },
  { "contact-status-changed", 4 }, { "segment-created", 1 }, { "segment-updated", 2 },
  { "user-created", 1 }, { "contact-update-failed", 1 },
}
local slots = {}
for _, entry in ipairs(mix) do
  for _ = 1, entry[2] do
    slots[#slots + 1] = entry[1]
  end
end

-- thread_number is a global that setup() sets in each thread's Lua state.
local created = 0
function setup(thread)
  created = created + 1
  thread:set("thread_number", created)
end

local counter = 0
local headers = { ["Content-Type"] = "application/json" }

local function contact()
  local n = math.random(contacts)
  return string.format("%032x", n * 2654435761 % 4294967291), n
end

local function email(n)
  return string.format("user%d@%s", n, domains[n % #domains + 1])
end

local function body(kind)
  local dsid, n = contact()
  local unique = string.format("%d-%d", thread_number, counter)
  local lead = n % 5000 + 1000
  if kind == "contact-updated" then
    return string.format('{"dsId":"%s","email":"%s","mobilePhone":"+1555%07d","phone":null,'
      .. '"firstName":"Ana","lastName":"Silva","salutation":"","title":"Buyer","company":"Example Co",'
      .. '"status":"Active","optOut":false,"city":"Lisbon","region":"","country":"PT","postalCode":"1000-001",'
      .. '"address":"Rua Augusta 1","geoCode":"","timezone":"Europe/Lisbon","gender":0,"dateBirth":null,'
      .. '"dateContactCreated":"2026-01-05T10:22:31.517","timestampCreated":"2026-01-05T10:22:31.517",'
      .. '"dateContactLastModified":"/Date(1767225600000)/","dateFirstSeen":"2026-01-05T10:22:31",'
      .. '"dateLastSeen":"2026-03-01T14:05:09Z","dateLastContacted":"1753-01-01T00:00:00","accountId":1042,'
      .. '"extendedProperties":{"plan":"pro","source":"webform","visit":"%s"}}', dsid, email(n), n, unique)
  elseif kind == "link-clicked" then
    return string.format('{"id":"lnk-%s"}', unique)
  elseif kind == "lead-status-changed" then
    return string.format('{"id":%d,"dsid":"%s","status":"%s","sequence":"%s"}', lead, dsid,
      statuses[counter % #statuses + 1], unique)
  elseif kind == "email-bounced" then
    return string.format('{"dsid":"%s","email":"%s","date":"2026-03-01T14:05:09.517",'
      .. '"messageid":"<%s@mail.example.com>","is_spam_complaint":"%s",'
      .. '"reason":"Permanent Delivery Failure - Address not deliverable"}', dsid, email(n), unique,
      counter % 20 == 0 and "true" or "false")
  elseif kind == "email-opt-out" or kind == "email-opt-in" then
    return string.format('{"dsid":"%s","email":"%s"}', dsid, email(n))
  elseif kind == "sms-opt-out" or kind == "sms-opt-in" then
    return string.format('{"dsid":"%s","mobile":"+1555%07d"}', dsid, n)
  elseif kind == "phone-opt-out" or kind == "phone-opt-in" then
    return string.format('{"dsid":"%s"}', dsid)
  elseif kind == "text-reply" then
    return string.format('{"dsid":"%s","mobile":"+1555%07d","message":"Yes, call me tomorrow \\ud83d\\udc4d %s"}',
      dsid, n, unique)
  elseif kind == "lead-created" then
    return string.format('{"id":%d,"dsid":"%s","source":"%s"}', lead, dsid, unique)
  elseif kind == "webform-submitted" then
    return string.format('{"webform_id":"wf-12","webform_name":"Contact us","lead_id":%d,"dsid":"%s","submission":"%s"}',
      lead, dsid, unique)
  elseif kind == "contact-status-changed" then
    return string.format('{"dsid":"%s","status":"%s","change":"%s"}', dsid,
      counter % 3 == 0 and "Inactive" or "Active", unique)
  elseif kind == "segment-created" or kind == "segment-updated" then
    return string.format('{"id":"seg-%s","name":"Spring buyers","status":"Active","description":"Bought in March",'
      .. '"segment_type":"Dynamic","is_call_list":"False"}', unique)
  elseif kind == "user-created" then
    return string.format('{"email":"staff%s@example.com","useruid":"%s"}', unique, unique)
  else
    return string.format('[{"ClassName":"System.Exception","Message":"Email is required %s"},'
      .. '{"dsId":"%s","firstName":"Ana"}]', unique, dsid)
  end
end

function init(args)
  math.randomseed(thread_number * 7919)
end

function request()
  counter = counter + 1
  -- 37 is coprime to 100, so consecutive requests walk through the kinds.
  local kind = slots[counter * 37 % #slots + 1]
  return wrk.format("POST", "/hooks/" .. kind .. suffix, headers, body(kind))
end
