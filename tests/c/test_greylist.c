/*
 * C tests of the greylist ABI. Built with -std=c11 -Wall -Wextra -Werror and
 * run under AddressSanitizer + UndefinedBehaviorSanitizer, and under
 * valgrind (see tests/run.sh); cross-built with mingw-w64 and run under Wine
 * against greylist.dll, 64- and 32-bit. Exits non-zero when any test fails.
 */
#define _POSIX_C_SOURCE 200809L /* pthread_barrier_t, mkdtemp */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "greylist.h"

#ifdef _WIN32
#include <direct.h>
#include <windows.h>
#endif

/* A new private folder for a test's files, named after `name`. */
static bool make_temp_dir(char *dir, size_t size, const char *name) {
#ifdef _WIN32
  char base[MAX_PATH];
  DWORD n = GetTempPathA(sizeof base, base);
  if (n == 0 || n >= sizeof base) return false;
  for (unsigned i = 0; i < 1000; i++) {
    snprintf(dir, size, "%sgreylist-c-%s-%lu-%u", base, name, (unsigned long)GetCurrentProcessId(), i);
    if (_mkdir(dir) == 0) return true;
    if (errno != EEXIST) return false;
  }
  return false;
#else
  snprintf(dir, size, "/tmp/greylist-c-%s-XXXXXX", name);
  return mkdtemp(dir) != NULL;
#endif
}

/* Removes a folder made by make_temp_dir, with what is in it. */
static bool remove_tree(const char *dir) {
  char cmd[500];
#ifdef _WIN32
  snprintf(cmd, sizeof cmd, "rmdir /s /q \"%s\"", dir);
#else
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
#endif
  return system(cmd) == 0;
}

#define T0 1700000000

static int failures = 0;
static int runs = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__,       \
              #cond);                                                          \
      return false;                                                            \
    }                                                                          \
  } while (0)

#define CHECK_STATUS(call, expected)                                           \
  do {                                                                         \
    greylist_status got_ = (call);                                             \
    if (got_ != (expected)) {                                                  \
      char msg_[256];                                                          \
      greylist_last_error(msg_, sizeof msg_);                                  \
      fprintf(stderr, "  %s:%d: %s gave %s, expected %s (last error: %s)\n",   \
              __FILE__, __LINE__, #call, greylist_status_str(got_),            \
              greylist_status_str(expected), msg_);                            \
      return false;                                                            \
    }                                                                          \
  } while (0)

/* The last error message names `needle`; else it is shown. */
#define CHECK_LAST_ERROR(needle)                                               \
  do {                                                                         \
    if (strstr(last_error(), (needle)) == NULL) {                              \
      fprintf(stderr, "  %s:%d: the last error \"%s\" does not say \"%s\"\n",   \
              __FILE__, __LINE__, last_error(), (needle));                     \
      return false;                                                            \
    }                                                                          \
  } while (0)

static void run_test(bool (*test)(void), const char *name) {
  runs++;
  bool ok = test();
  printf("test %s ... %s\n", name, ok ? "ok" : "FAILED");
  if (!ok) {
    failures++;
  }
}

/* The last error message, for assertions. */
static const char *last_error(void) {
  static char buf[512];
  greylist_last_error(buf, sizeof buf);
  return buf;
}

static greylist_engine *new_engine(void) {
  greylist_engine *engine = NULL;
  if (greylist_engine_new(NULL, &engine) != GREYLIST_STATUS_OK) {
    return NULL;
  }
  return engine;
}

static bool test_version(void) {
  CHECK(greylist_abi_version() == GREYLIST_ABI_VERSION);
  CHECK(strlen(greylist_version()) >= 5);
  CHECK(strcmp(greylist_status_str(GREYLIST_STATUS_OK), "GREYLIST_STATUS_OK") == 0);
  CHECK(strcmp(greylist_status_str(12345), "GREYLIST_STATUS_UNKNOWN") == 0);
  return true;
}

static bool test_cycle(void) {
  greylist_engine *engine = new_engine();
  CHECK(engine != NULL);
  greylist_verdict v;
  const char *ip = "192.0.2.1", *from = "alice@example.org", *to = "bob@example.net";

  CHECK_STATUS(greylist_engine_check(engine, ip, from, to, T0, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_DEFER && v.reason == GREYLIST_REASON_NEW);
  CHECK(v.retry_after == 300);
  char reply[600];
  CHECK_STATUS(greylist_verdict_reply(engine, &v, reply, sizeof reply), GREYLIST_STATUS_OK);
  CHECK(strcmp(reply, "450 4.2.0 Greylisted, please try again in 300 seconds") == 0);

  CHECK_STATUS(greylist_engine_check(engine, ip, from, to, T0 + 100, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_DEFER && v.reason == GREYLIST_REASON_EARLY_RETRY);
  CHECK(v.retry_after == 200);

  /* Another host of the same /24, a BATV-tagged sender: the same triplet. */
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.77", "prvs=1234abcd=Alice@Example.org",
                                     to, T0 + 300, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_PASS && v.reason == GREYLIST_REASON_RETRIED);
  CHECK(v.delayed == 300);
  CHECK_STATUS(greylist_verdict_reply(engine, &v, reply, sizeof reply), GREYLIST_STATUS_OK);
  CHECK(reply[0] == '\0');

  CHECK_STATUS(greylist_engine_check(engine, ip, from, to, T0 + 86400, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_PASS && v.reason == GREYLIST_REASON_PASSED);
  CHECK(greylist_engine_len(engine) == 1);
  uint64_t removed = 99;
  CHECK_STATUS(greylist_engine_sweep(engine, T0 + 86400, &removed), GREYLIST_STATUS_OK);
  CHECK(removed == 0);

  /* The system clock works too (a sweep with an injected time years before
     it would remove this entry: stored times that far ahead are corrupt). */
  CHECK_STATUS(greylist_engine_check(engine, "2001:db8::1", "", to, GREYLIST_NOW, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW);

  greylist_stats stats;
  memset(&stats, 0, sizeof stats);
  stats.struct_size = sizeof stats;
  CHECK_STATUS(greylist_engine_stats(engine, &stats), GREYLIST_STATUS_OK);
  CHECK(stats.checks == 5 && stats.new_triplets == 2 && stats.early_retries == 1);
  CHECK(stats.retried == 1 && stats.passed == 1 && stats.entries == 2);

  CHECK_STATUS(greylist_engine_sweep(engine, 4000000000LL /* 2096 */, &removed),
               GREYLIST_STATUS_OK);
  CHECK(removed == 2 && greylist_engine_len(engine) == 0);
  greylist_engine_free(engine);
  return true;
}

static bool test_config(void) {
  greylist_config *config = greylist_config_new();
  CHECK(config != NULL);
  CHECK_STATUS(greylist_config_set_delay(config, 60), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_retry_window(config, 3600), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_pass_ttl(config, 86400), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_awl_threshold(config, 0), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_awl_ttl(config, 86400), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_blast(config, 5, 600), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_max_entries(config, 1000), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_prefixes(config, 32, 128), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_extension_delimiters(config, "+-"), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_reply(config, 451, "4.7.1", "Wait %s s"), GREYLIST_STATUS_OK);

  CHECK_STATUS(greylist_config_set_prefixes(config, 33, 64), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("ipv4_prefix");
  CHECK_STATUS(greylist_config_set_reply(config, 550, "5.7.1", "x"),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(greylist_config_set_max_entries(config, 0), GREYLIST_STATUS_INVALID_ARGUMENT);

  greylist_engine *engine = NULL;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  /* The engine copied the config: freeing it now is fine. */
  greylist_config_free(config);

  greylist_verdict v;
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a-tag@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  char reply[64];
  CHECK_STATUS(greylist_verdict_reply(engine, &v, reply, sizeof reply), GREYLIST_STATUS_OK);
  CHECK(strcmp(reply, "451 4.7.1 Wait 60 s") == 0);
  /* /32: another address is another client; '-' is a delimiter. */
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.2", "a@x.org", "b@y.net", T0 + 60, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", "b@y.net", T0 + 60, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_RETRIED);
  greylist_engine_free(engine);

  /* Settings that do not fit together are refused by greylist_engine_new. */
  config = greylist_config_new();
  CHECK_STATUS(greylist_config_set_delay(config, 7200), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_retry_window(config, 3600), GREYLIST_STATUS_OK);
  engine = (greylist_engine *)0x1;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK(engine == (greylist_engine *)0x1);
  CHECK_LAST_ERROR("delay");
  greylist_config_free(config);
  return true;
}

static bool test_null_arguments(void) {
  greylist_engine *engine = new_engine();
  CHECK(engine != NULL);
  greylist_verdict v = {99, 99, 99, 99};
  const char *ip = "192.0.2.1", *from = "a@x.org", *to = "b@y.net";

  CHECK_STATUS(greylist_engine_new(NULL, NULL), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "out: is NULL") == 0);
  CHECK_STATUS(greylist_engine_check(NULL, ip, from, to, T0, &v), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "engine: is NULL") == 0);
  CHECK_STATUS(greylist_engine_check(engine, NULL, from, to, T0, &v),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "client_ip: is NULL") == 0);
  CHECK_STATUS(greylist_engine_check(engine, ip, NULL, to, T0, &v), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "sender: is NULL") == 0);
  CHECK_STATUS(greylist_engine_check(engine, ip, from, NULL, T0, &v),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "recipient: is NULL") == 0);
  CHECK_STATUS(greylist_engine_check(engine, ip, from, to, T0, NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(v.action == 99 && v.reason == 99 && v.retry_after == 99);
  CHECK(greylist_engine_len(engine) == 0);

  uint64_t removed = 7;
  CHECK_STATUS(greylist_engine_sweep(NULL, T0, &removed), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_sweep(engine, T0, NULL), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(removed == 7);
  CHECK(greylist_engine_len(NULL) == 0);
  greylist_stats stats = {.struct_size = sizeof stats};
  CHECK_STATUS(greylist_engine_stats(NULL, &stats), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_stats(engine, NULL), GREYLIST_STATUS_NULL_ARGUMENT);

  char buf[64];
  greylist_verdict defer = {GREYLIST_ACTION_DEFER, GREYLIST_REASON_NEW, 300, 0};
  CHECK_STATUS(greylist_verdict_reply(NULL, &defer, buf, sizeof buf),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_verdict_reply(engine, NULL, buf, sizeof buf),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_verdict_reply(engine, &defer, NULL, 64), GREYLIST_STATUS_NULL_ARGUMENT);

  CHECK_STATUS(greylist_config_set_delay(NULL, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_retry_window(NULL, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_pass_ttl(NULL, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_awl_threshold(NULL, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_awl_ttl(NULL, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_blast(NULL, 1, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_max_entries(NULL, 1), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_prefixes(NULL, 24, 64), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_extension_delimiters(NULL, "+"),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_reply(NULL, 450, "4.2.0", "x"), GREYLIST_STATUS_NULL_ARGUMENT);
  greylist_config *config = greylist_config_new();
  CHECK_STATUS(greylist_config_set_extension_delimiters(config, NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_reply(config, 450, NULL, "x"), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_reply(config, 450, "4.2.0", NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  greylist_config_free(config);

  /* Asking for the length only. */
  CHECK(greylist_last_error(NULL, 0) == strlen("text: is NULL"));

  greylist_engine_free(NULL);
  greylist_config_free(NULL);
  greylist_engine_free(engine);
  return true;
}

static bool test_bad_input(void) {
  greylist_engine *engine = new_engine();
  CHECK(engine != NULL);
  greylist_verdict v = {99, 99, 99, 99};
  const char *bad_ips[] = {"", "192.0.2", "192.0.2.256", "example.com", "1.2.3.4/24",
                           "2001:db8:::1", "::ffff:999.0.0.1"};
  for (size_t i = 0; i < sizeof bad_ips / sizeof bad_ips[0]; i++) {
    CHECK_STATUS(greylist_engine_check(engine, bad_ips[i], "a@x.org", "b@y.net", T0, &v),
                 GREYLIST_STATUS_INVALID_ARGUMENT);
    CHECK(strncmp(last_error(), "client_ip: ", 11) == 0);
  }
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", "", T0, &v),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK(strcmp(last_error(), "recipient: is empty") == 0);

  /* 64 KiB strings in each position. */
  size_t big = 64 * 1024;
  char *huge = malloc(big + 1);
  CHECK(huge != NULL);
  memset(huge, 'a', big);
  huge[big] = '\0';
  CHECK_STATUS(greylist_engine_check(engine, huge, "a@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK(strncmp(last_error(), "client_ip: ", 11) == 0);
  free(huge);

  /* A client IP that is not UTF-8 is a malformed IP. */
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.\xff", "a@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK(strncmp(last_error(), "client_ip: is not valid UTF-8", 29) == 0);

  /* A verdict the caller made up. */
  greylist_verdict bogus = {GREYLIST_ACTION_PASS, 1000, 0, 0};
  char buf[64];
  CHECK_STATUS(greylist_verdict_reply(engine, &bogus, buf, sizeof buf),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  greylist_verdict mismatched = {GREYLIST_ACTION_PASS, GREYLIST_REASON_NEW, 0, 0};
  CHECK_STATUS(greylist_verdict_reply(engine, &mismatched, buf, sizeof buf),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  /* A buffer too small: nothing written. */
  greylist_verdict defer = {GREYLIST_ACTION_DEFER, GREYLIST_REASON_NEW, 300, 0};
  memset(buf, 'x', sizeof buf);
  CHECK_STATUS(greylist_verdict_reply(engine, &defer, buf, 10), GREYLIST_STATUS_BUFFER_TOO_SMALL);
  CHECK(buf[0] == 'x' && buf[9] == 'x');
  CHECK_LAST_ERROR("bytes needed");

  /* A truncated last-error copy is NUL-terminated and reports the full length. */
  char tiny[8];
  size_t full = greylist_last_error(tiny, sizeof tiny);
  CHECK(full > sizeof tiny && strlen(tiny) == sizeof tiny - 1);

  /* Stats from a caller whose struct is too small to be real. */
  greylist_stats stats = {.struct_size = 4};
  CHECK_STATUS(greylist_engine_stats(engine, &stats), GREYLIST_STATUS_INVALID_ARGUMENT);

  CHECK(v.action == 99);
  CHECK(greylist_engine_len(engine) == 0);
  greylist_engine_free(engine);
  return true;
}

/* Issue 15, item 1: addresses that are legal in SMTP but over 1 KiB or not
   UTF-8 used to be INVALID_ARGUMENT, which hosts waved through. */
static bool test_long_and_latin1_addresses_are_greylisted(void) {
  greylist_engine *engine = new_engine();
  CHECK(engine != NULL);
  greylist_verdict v;
  size_t big = 64 * 1024;
  char *huge = malloc(big + 1);
  CHECK(huge != NULL);
  memset(huge, 'a', big);
  huge[big] = '\0';
  /* An over-long sender or recipient is legal in SMTP: keyed by its bytes and
     greylisted like any other (issue 15, item 1). */
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", huge, "b@y.net", T0, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_DEFER && v.reason == GREYLIST_REASON_NEW);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", huge, "b@y.net", T0 + 300, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_RETRIED);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", huge, T0, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW);

  /* Not UTF-8 (Latin-1): greylisted, normalised as the ASCII around it. */
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "J\xfcrgen+x@X.org", "b@y.net", T0, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "j\xfcrgen@x.org", "b@y.net", T0 + 300, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_RETRIED);
  free(huge);
  CHECK(greylist_engine_len(engine) == 3);
  greylist_engine_free(engine);
  return true;
}

/* Reads a whole file; the caller frees it. */
static unsigned char *read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *buf = malloc((size_t)n);
  if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  *len = (size_t)n;
  return buf;
}

static bool write_file(const char *path, const unsigned char *data, size_t len) {
  FILE *f = fopen(path, "wb");
  if (f == NULL) return false;
  bool ok = fwrite(data, 1, len, f) == len;
  return fclose(f) == 0 && ok;
}

static bool test_snapshots(void) {
  char dir[300];
  CHECK(make_temp_dir(dir, sizeof dir, "snap"));
  char path[400], bad[400];
  snprintf(path, sizeof path, "%s/g.snap", dir);
  snprintf(bad, sizeof bad, "%s/bad.snap", dir);
  greylist_verdict v;
  char rcpt[64];

  /* An engine configured with a snapshot starts empty, saves on free. */
  greylist_config *config = greylist_config_new();
  CHECK_STATUS(greylist_config_set_start_empty_if_corrupt(config, true),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(greylist_config_set_snapshot(config, path, 0), GREYLIST_STATUS_OK);
  greylist_engine *engine = NULL;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  for (int i = 0; i < 200; i++) {
    snprintf(rcpt, sizeof rcpt, "user-%c%c@example.net", 'a' + i % 26, 'a' + i / 26);
    CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", rcpt, T0, &v),
                 GREYLIST_STATUS_OK);
  }
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", "user-aa@example.net",
                                     T0 + 300, &v),
               GREYLIST_STATUS_OK);
  greylist_engine_free(engine);

  /* Opened again: every entry is back, the pending one passes on time. */
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  CHECK(greylist_engine_len(engine) == 200);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", "user-ba@example.net",
                                     T0 + 300, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_RETRIED);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@x.org", "user-aa@example.net",
                                     T0 + 400, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_PASSED);
  CHECK_STATUS(greylist_engine_save(engine, path), GREYLIST_STATUS_OK);
  greylist_engine_free(engine);

  /* greylist_engine_load, and its errors. */
  CHECK_STATUS(greylist_engine_load(NULL, path, &engine), GREYLIST_STATUS_OK);
  CHECK(greylist_engine_len(engine) == 200);
  CHECK_STATUS(greylist_engine_save(engine, "/nonexistent-dir/g.snap"), GREYLIST_STATUS_IO);
  CHECK_LAST_ERROR("/nonexistent-dir/g.snap");
  CHECK_STATUS(greylist_engine_save(NULL, path), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_save(engine, NULL), GREYLIST_STATUS_NULL_ARGUMENT);
  greylist_engine_free(engine);
  CHECK_STATUS(greylist_engine_load(NULL, NULL, &engine), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_load(NULL, path, NULL), GREYLIST_STATUS_NULL_ARGUMENT);
  engine = NULL;
  CHECK_STATUS(greylist_engine_load(NULL, "/nonexistent-dir/g.snap", &engine), GREYLIST_STATUS_IO);
  CHECK(engine == NULL);
  greylist_config *rekeyed = greylist_config_new();
  CHECK_STATUS(greylist_config_set_prefixes(rekeyed, 16, 48), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_load(rekeyed, path, &engine), GREYLIST_STATUS_INCOMPATIBLE);
  CHECK_LAST_ERROR("prefixes /24 /64 vs /16 /48");
  greylist_config_free(rekeyed);

  /* 64 truncations and 1,000 single-bit flips: each refused as corrupt. */
  size_t len = 0;
  unsigned char *bytes = read_file(path, &len);
  /* The 128-byte header and 200 triplet records of 24 bytes, at least. */
  CHECK(bytes != NULL && len >= 128 + 200 * 24);
  unsigned seed = 12345;
  for (int i = 0; i < 64; i++) {
    seed = seed * 1103515245u + 12345u;
    size_t cut = i < 4 ? (size_t)(i * 40) : seed % len;
    CHECK(write_file(bad, bytes, cut));
    CHECK_STATUS(greylist_engine_load(NULL, bad, &engine), GREYLIST_STATUS_CORRUPT);
  }
  for (int i = 0; i < 1000; i++) {
    seed = seed * 1103515245u + 12345u;
    size_t bit = (seed >> 4) % (len * 8);
    bytes[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    CHECK(write_file(bad, bytes, len));
    bytes[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    CHECK_STATUS(greylist_engine_load(NULL, bad, &engine), GREYLIST_STATUS_CORRUPT);
  }
  CHECK(engine == NULL);

  /* A corrupt snapshot fails greylist_engine_new, unless told to start empty. */
  bytes[len / 2] ^= 0x10;
  CHECK(write_file(path, bytes, len));
  free(bytes);
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_CORRUPT);
  CHECK_STATUS(greylist_config_set_start_empty_if_corrupt(config, true), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  CHECK(greylist_engine_len(engine) == 0);
  greylist_engine_free(engine);
  CHECK_STATUS(greylist_config_set_snapshot(NULL, path, 0), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_snapshot(config, "", 0), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(greylist_config_set_start_empty_if_corrupt(NULL, true),
               GREYLIST_STATUS_NULL_ARGUMENT);
  greylist_config_free(config);

  CHECK(remove_tree(dir));
  return true;
}

struct event_counts {
  int kinds[8];
  int lost_from_corp;
  int trap_blocks;
};

static void count_event(void *user_data, const greylist_event *event) {
  struct event_counts *counts = user_data;
  if (event->kind < 8) counts->kinds[event->kind]++;
  if (event->kind == GREYLIST_EVENT_LOST_MAIL && strcmp(event->network, "192.0.2.0/24") == 0 &&
      event->reason == GREYLIST_REASON_EARLY_RETRY && event->at == T0 + 9 && event->count == 2) {
    counts->lost_from_corp++;
  }
  if (event->kind == GREYLIST_EVENT_BLOCK_STARTED && event->reason == GREYLIST_REASON_TRAPPED &&
      strcmp(event->network, "198.18.0.0/24") == 0 && event->at == T0) {
    counts->trap_blocks++;
  }
}

/* Issue 16: copies of one message sent again at once block its network:
   the 6th early retry by default, the 2nd with blast_copies 1. */
static bool test_blast_copies(void) {
  const uint32_t settings[] = {5, 1};
  for (size_t n = 0; n < sizeof settings / sizeof settings[0]; n++) {
    uint32_t copies = settings[n];
    greylist_config *config = greylist_config_new();
    CHECK_STATUS(greylist_config_set_blast_copies(config, copies), GREYLIST_STATUS_OK);
    greylist_engine *engine = NULL;
    CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
    greylist_config_free(config);
    greylist_verdict v;
    for (uint32_t i = 0; i <= copies; i++) {
      CHECK_STATUS(greylist_engine_check(engine, "198.18.0.9", "s@spam.example", "v@y.net", T0, &v),
                   GREYLIST_STATUS_OK);
      CHECK(v.action == GREYLIST_ACTION_DEFER);
    }
    CHECK_STATUS(greylist_engine_check(engine, "198.18.0.9", "s@spam.example", "v@y.net", T0, &v),
                 GREYLIST_STATUS_OK);
    CHECK(v.action == GREYLIST_ACTION_BLOCK && v.reason == GREYLIST_REASON_BLOCKED);
    greylist_engine_free(engine);
  }
  return true;
}

/* Issue 16: lost mail is found `lost_after` after the delay, not at
   expiry, and a late retry that passes recovers it. */
static bool test_lost_after(void) {
  greylist_config *config = greylist_config_new();
  CHECK_STATUS(greylist_config_set_lost_after(config, 60), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_lost_after(config, 0), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("lost_after");
  greylist_engine *engine = NULL;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  greylist_config_free(config);
  greylist_verdict v;
  const int64_t times[] = {T0, T0 + 4, T0 + 9};
  for (int i = 0; i < 3; i++) {
    CHECK_STATUS(greylist_engine_check(engine, "192.0.2.25", "ceo@corp.example", "a@y.net",
                                       times[i], &v),
                 GREYLIST_STATUS_OK);
  }
  uint64_t removed = 0;
  greylist_lost_mail rows[2];
  size_t count = 99;
  CHECK_STATUS(greylist_engine_sweep(engine, T0 + 359, &removed), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, rows, 2, &count), GREYLIST_STATUS_OK);
  CHECK(count == 0);
  CHECK_STATUS(greylist_engine_sweep(engine, T0 + 360, &removed), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, rows, 2, &count), GREYLIST_STATUS_OK);
  CHECK(count == 1 && rows[0].count == 1 && strcmp(rows[0].network, "192.0.2.0/24") == 0);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.25", "ceo@corp.example", "a@y.net", T0 + 900,
                                     &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_RETRIED);
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, rows, 2, &count), GREYLIST_STATUS_OK);
  CHECK(count == 0);
  greylist_stats stats = {.struct_size = sizeof stats};
  CHECK_STATUS(greylist_engine_stats(engine, &stats), GREYLIST_STATUS_OK);
  CHECK(stats.lost_mail == 1 && stats.lost_recovered == 1);
  greylist_engine_free(engine);
  return true;
}

static bool test_defences(void) {
  greylist_config *config = greylist_config_new();
  CHECK_STATUS(greylist_config_set_key_by_verified_domain(config, true), GREYLIST_STATUS_OK);
  greylist_engine *engine = NULL;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  greylist_config_free(config);
  greylist_verdict v;

  /* Lists, and a bad entry that changes nothing. */
  const char *clients[] = {"10.0.0.0/8", ".google.com"};
  const char *traps[] = {"trap@example.net"};
  const char *bad[] = {"192.0.2.0/24", "not a client"};
  CHECK_STATUS(greylist_engine_set_list(engine, GREYLIST_LIST_CLIENTS, clients, 2, true),
               GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_set_list(engine, GREYLIST_LIST_TRAP_RECIPIENTS, traps, 1, true),
               GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_set_list(engine, GREYLIST_LIST_CLIENTS, bad, 2, false),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK(strncmp(last_error(), "line 2: ", 8) == 0);
  CHECK_STATUS(greylist_engine_set_list(engine, 99, clients, 2, true),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(greylist_engine_check(engine, "10.9.8.7", "a@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_WHITELISTED);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.200", "a@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW);

  char dir[300];
  CHECK(make_temp_dir(dir, sizeof dir, "lists"));
  char path[400];
  snprintf(path, sizeof path, "%s/recipients.txt", dir);
  const char *text = "# opted out\npostmaster@\nexample.org\n\nbad entry here\n";
  CHECK(write_file(path, (const unsigned char *)text, strlen(text)));
  size_t loaded = 99;
  CHECK_STATUS(greylist_engine_load_list(engine, GREYLIST_LIST_RECIPIENTS, path, &loaded),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("line 5: ");
  CHECK(loaded == 99);
  text = "# opted out\npostmaster@\nexample.org\n";
  CHECK(write_file(path, (const unsigned char *)text, strlen(text)));
  CHECK_STATUS(greylist_engine_load_list(engine, GREYLIST_LIST_RECIPIENTS, path, &loaded),
               GREYLIST_STATUS_OK);
  CHECK(loaded == 2);
  CHECK_STATUS(greylist_engine_check(engine, "203.0.113.1", "a@x.org", "Postmaster@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_WHITELISTED);
  snprintf(path, sizeof path, "%s/missing.txt", dir);
  CHECK_STATUS(greylist_engine_load_list(engine, GREYLIST_LIST_RECIPIENTS, path, &loaded),
               GREYLIST_STATUS_IO);

  /* Extended requests: a verified host name, and a pool keyed by domain. */
  greylist_request req = {.struct_size = sizeof req,
                          .client_ip = "203.0.113.5",
                          .sender = "alice@example.com",
                          .recipient = "bob@example.net",
                          .client_name = "mail-a1.google.com",
                          .now = T0};
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_WHITELISTED);
  req.client_name = NULL;
  req.verified_domain = "example.com";
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW);
  req.client_ip = "198.51.100.7";
  req.now = T0 + 300;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_RETRIED);
  req.struct_size = 8;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_INVALID_ARGUMENT);
  req.struct_size = sizeof req;
  req.recipient = NULL;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "recipient: is NULL") == 0);
  CHECK_STATUS(greylist_engine_check_request(engine, NULL, &v), GREYLIST_STATUS_NULL_ARGUMENT);

  /* Events arrive once each. */
  struct event_counts counts;
  memset(&counts, 0, sizeof counts);
  CHECK_STATUS(greylist_engine_set_event_callback(engine, count_event, &counts),
               GREYLIST_STATUS_OK);
  const int64_t times[] = {T0, T0 + 4, T0 + 9};
  for (int i = 0; i < 3; i++) {
    CHECK_STATUS(greylist_engine_check(engine, "192.0.2.25", "ceo@corp.example", "a@y.net",
                                       times[i], &v),
                 GREYLIST_STATUS_OK);
  }
  CHECK_STATUS(greylist_engine_check(engine, "10.0.0.1", "a@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_check(engine, "198.18.0.1", "s@x.org", "trap@example.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_BLOCK && v.reason == GREYLIST_REASON_TRAPPED);
  CHECK(counts.kinds[GREYLIST_EVENT_DEFERRED] == 3 && counts.kinds[GREYLIST_EVENT_PASSED] == 1);
  CHECK(counts.kinds[GREYLIST_EVENT_BLOCKED] == 1);
  CHECK(counts.kinds[GREYLIST_EVENT_BLOCK_STARTED] == 1 && counts.trap_blocks == 1);
  greylist_client_report trapped = {.struct_size = sizeof trapped};
  CHECK_STATUS(greylist_engine_client_report(engine, "198.18.0.99", NULL, T0 + 10, &trapped),
               GREYLIST_STATUS_OK);
  CHECK(strcmp(trapped.network, "198.18.0.0/24") == 0);
  CHECK((trapped.flags & GREYLIST_CLIENT_BLOCKED) && trapped.blocked_until == T0 + 3600);
  uint64_t removed = 0;
  CHECK_STATUS(greylist_engine_sweep(engine, T0 + 3 * 86400, &removed), GREYLIST_STATUS_OK);
  CHECK(counts.kinds[GREYLIST_EVENT_LOST_MAIL] == 1 && counts.lost_from_corp == 1);
  /* The old name of the lost-mail kind still compiles, with its value. */
  CHECK(GREYLIST_EVENT_EXPIRED_UNRETRIED == GREYLIST_EVENT_LOST_MAIL);
  CHECK(counts.kinds[GREYLIST_EVENT_BLOCK_ENDED] == 1);
  CHECK_STATUS(greylist_engine_set_event_callback(engine, NULL, NULL), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_check(engine, "10.0.0.1", "a@x.org", "b@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK(counts.kinds[GREYLIST_EVENT_PASSED] == 1);

  /* The lost-mail report, and a client's report. */
  greylist_lost_mail rows[4];
  size_t count = 99;
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, rows, 4, &count), GREYLIST_STATUS_OK);
  CHECK(count == 1 && strcmp(rows[0].network, "192.0.2.0/24") == 0 && rows[0].count == 1);
  CHECK(rows[0].last_seen == T0 + 9);
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, NULL, 0, &count), GREYLIST_STATUS_OK);
  CHECK(count == 0);
  greylist_client_report report = {.struct_size = sizeof report};
  CHECK_STATUS(greylist_engine_client_report(engine, "10.1.1.1", NULL, T0, &report),
               GREYLIST_STATUS_OK);
  CHECK(report.flags == GREYLIST_CLIENT_WHITELISTED);

  /* Release and forget. */
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.30", "x@corp.example", "a@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.30", "x@corp.example", "b@y.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_release(engine, "192.0.2.30", "x@corp.example", "a@y.net", T0 + 1),
               GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.30", "x@corp.example", "a@y.net", T0 + 2, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_PASSED);
  uint64_t released = 0;
  CHECK_STATUS(greylist_engine_release_client(engine, "192.0.2.31", T0 + 3, &released),
               GREYLIST_STATUS_OK);
  CHECK(released == 1);
  bool found = false;
  CHECK_STATUS(greylist_engine_forget(engine, "192.0.2.30", "x@corp.example", "b@y.net", &found),
               GREYLIST_STATUS_OK);
  CHECK(found);
  CHECK_STATUS(greylist_engine_forget(engine, "192.0.2.30", "x@corp.example", "b@y.net", &found),
               GREYLIST_STATUS_OK);
  CHECK(!found);

  /* NULL arguments. */
  CHECK_STATUS(greylist_engine_set_list(NULL, 0, clients, 2, true), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_set_list(engine, 0, NULL, 2, true), GREYLIST_STATUS_NULL_ARGUMENT);
  const char *with_null[] = {"10.0.0.0/8", NULL};
  CHECK_STATUS(greylist_engine_set_list(engine, 0, with_null, 2, true),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "entries[1]: entries: is NULL") == 0);
  CHECK_STATUS(greylist_engine_load_list(engine, 0, NULL, &loaded), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_load_list(engine, 0, path, NULL), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_set_event_callback(NULL, count_event, &counts),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, NULL, 4, &count),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_lost_mail_report(engine, rows, 4, NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_client_report(engine, NULL, NULL, T0, &report),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_client_report(engine, "10.0.0.1", NULL, T0, NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_release(engine, "10.0.0.1", NULL, "b@y", T0),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_release_client(engine, "10.0.0.1", T0, NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_engine_forget(engine, "10.0.0.1", "a@x", "b@y", NULL),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_key_by_verified_domain(NULL, true),
               GREYLIST_STATUS_NULL_ARGUMENT);

  greylist_engine_free(engine);
  CHECK(remove_tree(dir));
  return true;
}

/* Issue 23: a pool that retries from another network passes when both
 * hosts' verified names share a registrable domain (key_by_host_name, on by
 * default); key_used says what keyed the request. */
static bool test_host_name_keys(void) {
  greylist_engine *engine = new_engine();
  CHECK(engine != NULL);
  greylist_verdict v;
  greylist_key_kind kind = 0;
  greylist_request req = {.struct_size = sizeof req,
                          .client_ip = "209.85.220.41",
                          .sender = "alice@gmail.com",
                          .recipient = "bob@example.net",
                          .client_name = "mail-sor-f41.google.com",
                          .now = T0,
                          .key_used = &kind};
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_DEFER && v.reason == GREYLIST_REASON_NEW);
  CHECK(kind == GREYLIST_KEY_HOST_DOMAIN);
  /* The retry, from another host of the pool in another network. */
  kind = 0;
  req.client_ip = "74.125.0.5";
  req.client_name = "mail-yw1-f5.google.com";
  req.now = T0 + 301;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_PASS && v.reason == GREYLIST_REASON_RETRIED);
  CHECK(v.delayed == 301 && kind == GREYLIST_KEY_HOST_DOMAIN);
  /* A generic name (the client's address in it) keys by network. */
  kind = 0;
  req.client_ip = "203.0.113.7";
  req.client_name = "host-203-0-113-7.dsl.example.net";
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW && kind == GREYLIST_KEY_NETWORK);
  /* A failed call writes nothing there. */
  kind = 99;
  req.client_ip = "not an address";
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK(kind == 99);
  /* A caller built against the header before key_used: its struct ends
   * before the field, which the library neither reads nor writes. */
  req.struct_size = offsetof(greylist_request, key_used);
  req.client_ip = "74.125.0.6";
  req.client_name = "mail-yw1-f6.google.com";
  req.now = T0 + 400;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_PASSED && kind == 99);
  /* key_used NULL: the verdict alone. */
  req.struct_size = sizeof req;
  req.key_used = NULL;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_PASSED);
  greylist_engine_free(engine);

  /* Turned off: the network keys the request, the retry from the other
   * network is a new triplet. */
  greylist_config *config = greylist_config_new();
  CHECK(config != NULL);
  CHECK_STATUS(greylist_config_set_key_by_host_name(config, false), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  greylist_config_free(config);
  req.key_used = &kind;
  req.client_ip = "209.85.220.41";
  req.client_name = "mail-sor-f41.google.com";
  req.now = T0;
  kind = 0;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.reason == GREYLIST_REASON_NEW && kind == GREYLIST_KEY_NETWORK);
  kind = 0;
  req.client_ip = "74.125.0.5";
  req.client_name = "mail-yw1-f5.google.com";
  req.now = T0 + 301;
  CHECK_STATUS(greylist_engine_check_request(engine, &req, &v), GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_DEFER && v.reason == GREYLIST_REASON_NEW);
  CHECK(kind == GREYLIST_KEY_NETWORK);
  greylist_engine_free(engine);

  CHECK_STATUS(greylist_config_set_key_by_host_name(NULL, true), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK(strcmp(last_error(), "config: is NULL") == 0);
  return true;
}

#define THREADS 4
#define CHECKS_PER_THREAD 20000

#define PHASES 4

static pthread_barrier_t phase_barrier;

struct worker {
  greylist_engine *engine;
  int id;
  int failures;
};

static void *worker_main(void *arg) {
  struct worker *w = arg;
  char ip[32], from[64];
  for (int i = 0; i < CHECKS_PER_THREAD; i++) {
    /* All threads enter each phase (a time step of one delay) together. */
    if (i % (CHECKS_PER_THREAD / PHASES) == 0) {
      pthread_barrier_wait(&phase_barrier);
    }
    int n = (i * 7 + w->id * 13) % 500;
    snprintf(ip, sizeof ip, "10.%d.%d.%d", n / 100, n % 100, w->id);
    snprintf(from, sizeof from, "sender-%c%c@example.org", 'a' + n % 26, 'a' + n / 26 % 26);
    greylist_verdict v;
    int64_t now = T0 + (i / (CHECKS_PER_THREAD / PHASES)) * 300;
    if (greylist_engine_check(w->engine, ip, from, "rcpt@example.net", now, &v) !=
        GREYLIST_STATUS_OK) {
      w->failures++;
    }
  }
  return NULL;
}

static bool test_threads(void) {
  /* Some 40 attempts of each triplet at one time would be blasted copies:
     this test is about counts under contention, so copies do not block. */
  greylist_config *config = greylist_config_new();
  CHECK(config != NULL);
  CHECK_STATUS(greylist_config_set_blast_copies(config, 0), GREYLIST_STATUS_OK);
  greylist_engine *engine = NULL;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  greylist_config_free(config);
  pthread_t threads[THREADS];
  struct worker workers[THREADS];
  CHECK(pthread_barrier_init(&phase_barrier, NULL, THREADS) == 0);
  for (int i = 0; i < THREADS; i++) {
    workers[i] = (struct worker){engine, i, 0};
    CHECK(pthread_create(&threads[i], NULL, worker_main, &workers[i]) == 0);
  }
  for (int i = 0; i < THREADS; i++) {
    CHECK(pthread_join(threads[i], NULL) == 0);
    CHECK(workers[i].failures == 0);
  }
  pthread_barrier_destroy(&phase_barrier);
  greylist_stats s = {.struct_size = sizeof s};
  CHECK_STATUS(greylist_engine_stats(engine, &s), GREYLIST_STATUS_OK);
  CHECK(s.checks == (uint64_t)THREADS * CHECKS_PER_THREAD);
  CHECK(s.checks == s.new_triplets + s.early_retries + s.retried + s.passed + s.whitelisted +
                        s.auto_whitelisted + s.blocked);
  CHECK(s.new_triplets == 500 && s.retried == 500);
  CHECK(greylist_engine_len(engine) == 500);
  greylist_engine_free(engine);
  return true;
}

/* Issue 15, item 10: after set_event_callback(NULL) returned, checks in
   flight on other threads still called the old callback with the old
   user_data, which the host had freed (heap-use-after-free under ASan). */
struct callback_data {
  uint64_t magic;
  atomic_ulong calls;
};

static void touch_user_data(void *user_data, const greylist_event *event) {
  struct callback_data *d = user_data;
  (void)event;
  if (d->magic != 0x5EEDull) abort();
  for (int i = 0; i < 50; i++) atomic_fetch_add(&d->calls, 1);
}

struct checker {
  greylist_engine *engine;
  int id;
  atomic_bool *stop;
  atomic_uint checks;
  int failures;
};

static void *checker_main(void *arg) {
  struct checker *c = arg;
  char ip[32], rcpt[64];
  for (unsigned i = 0; !atomic_load(c->stop); i++) {
    snprintf(ip, sizeof ip, "10.%d.%u.1", c->id, (i / 256) % 256);
    snprintf(rcpt, sizeof rcpt, "r%u@example.net", i % 1000);
    greylist_verdict v;
    if (greylist_engine_check(c->engine, ip, "a@x.org", rcpt, T0 + i, &v) != GREYLIST_STATUS_OK)
      c->failures++;
    atomic_fetch_add(&c->checks, 1);
  }
  return NULL;
}

static bool test_replaced_callback_user_data_can_be_freed(void) {
  greylist_engine *engine = new_engine();
  CHECK(engine != NULL);
  atomic_bool stop = false;
  pthread_t threads[THREADS];
  struct checker checkers[THREADS];
  for (int i = 0; i < THREADS; i++) {
    checkers[i] = (struct checker){engine, i, &stop, 0, 0};
    CHECK(pthread_create(&threads[i], NULL, checker_main, &checkers[i]) == 0);
  }
  /* The rounds start once every checker runs (threads start slowly under
   * Wine: the rounds were over before the first check). */
  time_t deadline = time(NULL) + 30;
  bool running = true;
  for (int i = 0; i < THREADS && running; i++) {
    while (atomic_load(&checkers[i].checks) < 10 && (running = time(NULL) < deadline)) {
      nanosleep(&(struct timespec){0, 100000}, NULL);
    }
  }
  if (!running) {
    atomic_store(&stop, true); /* the threads use `stop`: join them first */
    for (int i = 0; i < THREADS; i++) pthread_join(threads[i], NULL);
    CHECK(!"every checker thread made 10 checks within 30 s");
  }
  uint64_t calls = 0;
  for (int round = 0; round < 300; round++) {
    struct callback_data *d = malloc(sizeof *d);
    CHECK(d != NULL);
    d->magic = 0x5EEDull;
    atomic_init(&d->calls, 0);
    CHECK_STATUS(greylist_engine_set_event_callback(engine, touch_user_data, d),
                 GREYLIST_STATUS_OK);
    /* Until the callback is being called (or 2 s): a window of a fixed
     * 0.1 ms could pass with every checker descheduled (Wine, 32-bit; and
     * mingw's nanosleep may return at once). */
    time_t until = time(NULL) + 2;
    while (atomic_load(&d->calls) == 0 && time(NULL) < until) {
      nanosleep(&(struct timespec){0, 100000}, NULL);
    }
    CHECK_STATUS(greylist_engine_set_event_callback(engine, NULL, NULL), GREYLIST_STATUS_OK);
    /* The header's promise: the old callback is done, its data may go. */
    calls += atomic_load(&d->calls);
    d->magic = 0;
    free(d);
  }
  atomic_store(&stop, true);
  for (int i = 0; i < THREADS; i++) {
    CHECK(pthread_join(threads[i], NULL) == 0);
    CHECK(checkers[i].failures == 0);
  }
  CHECK(calls > 0);
  greylist_engine_free(engine);
  return true;
}

/* An engine on Redis: `url`, keyed by the secret in `secret_path`. Its
 * timeout is 5 s, not the 50 ms default: under valgrind on a loaded
 * machine the first check (connect, script load) took longer, and was
 * answered by the local table (seen in a session's run). */
static greylist_engine *redis_engine(const char *url, const char *secret_path) {
  greylist_config *config = greylist_config_new();
  greylist_engine *engine = NULL;
  bool ok = greylist_config_set_redis(config, url) == GREYLIST_STATUS_OK &&
            greylist_config_set_secret_file(config, secret_path) == GREYLIST_STATUS_OK &&
            greylist_config_set_redis_timeout_ms(config, 5000) == GREYLIST_STATUS_OK &&
            greylist_engine_new(config, &engine) == GREYLIST_STATUS_OK;
  greylist_config_free(config);
  return ok ? engine : NULL;
}

/* Redis settings, the fallback when Redis is not there, and (when
 * tests/run.sh started a redis-server: GREYLIST_TEST_REDIS_URL) two engines
 * sharing triplets through it. */
static bool test_redis(void) {
  char dir[300];
  CHECK(make_temp_dir(dir, sizeof dir, "redis"));
  char secret[400], bad_secret[400];
  snprintf(secret, sizeof secret, "%s/secret", dir);
  snprintf(bad_secret, sizeof bad_secret, "%s/bad", dir);
  const char *hex = "00112233445566778899aabbccddeeff\n";
  CHECK(write_file(secret, (const unsigned char *)hex, strlen(hex)));
  CHECK(write_file(bad_secret, (const unsigned char *)"0011", 4));

  greylist_config *config = greylist_config_new();
  CHECK_STATUS(greylist_config_set_redis(config, "http://example.com/"),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("redis");
  CHECK_STATUS(greylist_config_set_secret_file(config, "/nonexistent/secret"),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("/nonexistent/secret");
  CHECK_STATUS(greylist_config_set_secret_file(config, bad_secret),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("32 hex digits");
  CHECK_STATUS(greylist_config_set_redis_timeout_ms(config, 0), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(greylist_config_set_redis(config, NULL), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_redis(NULL, "redis://127.0.0.1/"),
               GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_redis_prefix(config, NULL), GREYLIST_STATUS_NULL_ARGUMENT);
  CHECK_STATUS(greylist_config_set_redis_prefix(config, "mx pool:"),
               GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(greylist_config_set_redis_fail_defer(config, true), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_pass_cache(config, 1000, 60), GREYLIST_STATUS_OK);
  /* Redis without a shared secret is refused when the engine is made. */
  CHECK_STATUS(greylist_config_set_redis(config, "redis://127.0.0.1:1/0"), GREYLIST_STATUS_OK);
  greylist_engine *engine = NULL;
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("shared_secret");
  CHECK(engine == NULL);
  /* A CA file is read when the engine is made; NULL goes back to the
   * system's roots. */
  CHECK_STATUS(greylist_config_set_redis(config, "rediss://127.0.0.1:1/0"), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_secret_file(config, secret), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_config_set_redis_ca_file(config, "/nonexistent/ca.pem"), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_INVALID_ARGUMENT);
  CHECK_LAST_ERROR("redis_ca_file: cannot read /nonexistent/ca.pem");
  CHECK_STATUS(greylist_config_set_redis_ca_file(config, NULL), GREYLIST_STATUS_OK);
  CHECK_STATUS(greylist_engine_new(config, &engine), GREYLIST_STATUS_OK);
  greylist_engine_free(engine);
  greylist_config_free(config);

  /* Nothing listens on port 1: the local table answers, failing open. */
  engine = redis_engine("redis://127.0.0.1:1/0", secret);
  CHECK(engine != NULL);
  greylist_verdict v;
  CHECK_STATUS(greylist_engine_check(engine, "192.0.2.1", "a@example.org", "b@example.net", T0, &v),
               GREYLIST_STATUS_OK);
  CHECK(v.action == GREYLIST_ACTION_PASS && v.reason == GREYLIST_REASON_STORE_UNAVAILABLE);
  char reply[256];
  CHECK_STATUS(greylist_verdict_reply(engine, &v, reply, sizeof reply), GREYLIST_STATUS_OK);
  CHECK(reply[0] == '\0');
  greylist_stats stats = {.struct_size = sizeof stats};
  CHECK_STATUS(greylist_engine_stats(engine, &stats), GREYLIST_STATUS_OK);
  CHECK(stats.store_unavailable == 1 && stats.store_errors == 1);
  /* An operator's call that Redis cannot carry out says so. */
  CHECK_STATUS(greylist_engine_release(engine, "192.0.2.1", "a@example.org", "b@example.net", T0),
               GREYLIST_STATUS_UNAVAILABLE);
  CHECK_LAST_ERROR("shared store");
  CHECK(strcmp(greylist_status_str(GREYLIST_STATUS_UNAVAILABLE), "GREYLIST_STATUS_UNAVAILABLE") == 0);
  greylist_engine_free(engine);

  const char *url = getenv("GREYLIST_TEST_REDIS_URL");
  if (url == NULL) {
    printf("  (no GREYLIST_TEST_REDIS_URL: the shared-store part is skipped)\n");
  } else {
    greylist_engine *mx1 = redis_engine(url, secret), *mx2 = redis_engine(url, secret);
    CHECK(mx1 != NULL && mx2 != NULL);
    char rcpt[64];
    snprintf(rcpt, sizeof rcpt, "c-%ld@example.net", (long)getpid());
    CHECK_STATUS(greylist_engine_check(mx1, "192.0.2.1", "a@example.org", rcpt, T0, &v),
                 GREYLIST_STATUS_OK);
    CHECK(v.action == GREYLIST_ACTION_DEFER && v.reason == GREYLIST_REASON_NEW);
    CHECK_STATUS(greylist_engine_check(mx2, "192.0.2.1", "a@example.org", rcpt, T0 + 301, &v),
                 GREYLIST_STATUS_OK);
    CHECK(v.action == GREYLIST_ACTION_PASS && v.reason == GREYLIST_REASON_RETRIED);
    CHECK(v.delayed == 301);
    CHECK_STATUS(greylist_engine_stats(mx2, &stats), GREYLIST_STATUS_OK);
    CHECK(stats.store_round_trips == 1 && stats.store_errors == 0);

    /* Issue 18: an operator's calls at one MX act on the other. The ASan and
     * valgrind runs share the redis-server: networks of this process's own. */
    int pid = (int)getpid();
    char ip[32], other_ip[32], lost_ip[32], lost_net[32];
    snprintf(ip, sizeof ip, "10.%d.%d.10", (pid >> 8) & 255, pid & 255);
    snprintf(other_ip, sizeof other_ip, "10.%d.%d.99", (pid >> 8) & 255, pid & 255);
    snprintf(lost_ip, sizeof lost_ip, "172.%d.%d.3", (pid >> 8) & 255, pid & 255);
    snprintf(lost_net, sizeof lost_net, "172.%d.%d.0/24", (pid >> 8) & 255, pid & 255);
    const char *from = "alice@corp.example";
    CHECK_STATUS(greylist_engine_check(mx1, ip, from, rcpt, T0, &v), GREYLIST_STATUS_OK);
    CHECK(v.reason == GREYLIST_REASON_NEW);
    CHECK_STATUS(greylist_engine_release(mx2, ip, from, rcpt, T0 + 5), GREYLIST_STATUS_OK);
    CHECK_STATUS(greylist_engine_check(mx1, ip, from, rcpt, T0 + 6, &v), GREYLIST_STATUS_OK);
    CHECK(v.action == GREYLIST_ACTION_PASS && v.reason == GREYLIST_REASON_PASSED);
    char rcpt2[80];
    snprintf(rcpt2, sizeof rcpt2, "forget-%s", rcpt);
    CHECK_STATUS(greylist_engine_check(mx1, ip, from, rcpt2, T0, &v), GREYLIST_STATUS_OK);
    bool found = false;
    CHECK_STATUS(greylist_engine_forget(mx2, ip, from, rcpt2, &found), GREYLIST_STATUS_OK);
    CHECK(found);
    CHECK_STATUS(greylist_engine_check(mx1, ip, from, rcpt2, T0 + 300, &v), GREYLIST_STATUS_OK);
    CHECK(v.reason == GREYLIST_REASON_NEW);
    greylist_client_report r1 = {.struct_size = sizeof r1}, r2 = {.struct_size = sizeof r2};
    CHECK_STATUS(greylist_engine_client_report(mx1, ip, NULL, T0 + 301, &r1), GREYLIST_STATUS_OK);
    CHECK_STATUS(greylist_engine_client_report(mx2, other_ip, NULL, T0 + 301, &r2),
                 GREYLIST_STATUS_OK);
    CHECK(r1.pending == 1 && r1.passed == 1 && r2.pending == 1 && r2.passed == 1);
    /* Exchange 2003 at MX 1, judged lost by MX 2's sweep, reported by both. */
    char lost_rcpt[80];
    snprintf(lost_rcpt, sizeof lost_rcpt, "lost-%s", rcpt);
    for (int dt = 0; dt <= 9; dt += 3) {
      CHECK_STATUS(greylist_engine_check(mx1, lost_ip, from, lost_rcpt, T0 + dt, &v),
                   GREYLIST_STATUS_OK);
    }
    uint64_t removed = 0;
    CHECK_STATUS(greylist_engine_sweep(mx2, T0 + 3900, &removed), GREYLIST_STATUS_OK);
    greylist_lost_mail rows[4];
    size_t count = 0;
    greylist_engine *fleet[] = {mx1, mx2};
    for (int i = 0; i < 2; i++) {
      CHECK_STATUS(greylist_engine_lost_mail_report(fleet[i], rows, 4, &count), GREYLIST_STATUS_OK);
      bool seen = false;
      for (size_t j = 0; j < count && j < 4; j++) {
        seen |= strcmp(rows[j].network, lost_net) == 0 && rows[j].count == 1;
      }
      CHECK(seen);
    }
    greylist_engine_free(mx1);
    greylist_engine_free(mx2);
  }
  CHECK(remove_tree(dir));
  return true;
}

int main(void) {
  run_test(test_version, "version");
  run_test(test_cycle, "cycle");
  run_test(test_config, "config");
  run_test(test_null_arguments, "null_arguments");
  run_test(test_bad_input, "bad_input");
  run_test(test_long_and_latin1_addresses_are_greylisted, "long_and_latin1_addresses_are_greylisted");
  run_test(test_threads, "threads");
  run_test(test_replaced_callback_user_data_can_be_freed, "replaced_callback_user_data_can_be_freed");
  run_test(test_snapshots, "snapshots");
  run_test(test_defences, "defences");
  run_test(test_host_name_keys, "host_name_keys");
  run_test(test_blast_copies, "blast_copies");
  run_test(test_lost_after, "lost_after");
  run_test(test_redis, "redis");
  printf("%d passed, %d failed\n", runs - failures, failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
