/*
 * fuse_session.c: a FUSE transport on libfuse 3's low-level (inode) API, driven from the JS
 * thread.
 *
 * What it owns. Per mounted session: the libfuse session and its device descriptor, a libuv
 * poll handle on that descriptor, the receive buffer, and references to the JS handlers. Per
 * addon instance: the table of pending requests, which turns each fuse_req_t into a token (a JS
 * number) that JS holds until it answers.
 *
 * Threading. Everything runs on the JS thread except invalidation notifications. The device
 * descriptor is non-blocking; when it is readable, the poll callback receives and processes
 * requests until the device has none left (EAGAIN), at most BATCH_REQUESTS requests or BATCH_NS
 * per wake-up so timers and other I/O are never starved, and after the last one it keeps
 * reading for up to `spinMicros` in case the next request is about to come (waking a sleeping
 * thread costs more than that here). libfuse calls the op callbacks synchronously inside
 * fuse_session_process_buf; each calls its JS handler at once, in a handle scope of its own,
 * inside one callback scope per batch, so promise jobs and nextTick callbacks run when the
 * batch ends. A handler that answers from a promise job is therefore answered only then: a
 * batch that leaves such a request pending does not spin (its caller cannot send anything
 * before the answer), and when promise jobs answered requests, another batch follows in the same
 * wake-up and spins for the next request those callers send.
 *
 * Who answers. JS answers every request exactly once through a reply function, at once or
 * later. A token is a slot index plus the slot's generation; answering frees the slot and bumps
 * its generation, so a second answer, or one with a made-up token, throws instead of reaching
 * libfuse. A reply of a kind the request's operation does not take throws too, and so does one
 * with a malformed argument; the request then stays pending. A handler that throws gets EIO for
 * its request if it had not answered, and the error goes to the session's onError. forget has
 * no answer: it is acknowledged here. Closing the session answers every request still pending
 * (the kernel no longer waits for them); a later JS answer to one of those returns false
 * rather than throwing. Reply functions also return false when the kernel discarded the answer
 * (an interrupted request): after open or create that means no release will follow, after a
 * lookup that no forget will.
 *
 * Notifications. The kernel may need a directory's lock, or a writeback of dirty pages, before
 * it completes an invalidation, and only this thread answers the requests that would release
 * them. So invalidations are written from libuv's thread pool and return a promise: safe to
 * start anywhere, handlers included, as long as JS does not wait for one before answering a
 * request on the same directory or inode. A session with notifications in flight refuses to
 * close (the thread may still be using the libfuse session).
 *
 * Numbers. Inode numbers, file handles and offsets cross as JS numbers: integers up to 2^53 - 1
 * (the kernel only echoes the inode numbers and handles the daemon gave it, plus the root's 1).
 * Times cross as whole seconds plus nanoseconds. Errors are positive errno values.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>

#include <fuse_lowlevel.h>
#include <node_api.h>
#include <uv.h>

#include "fuse_session.h"

/* At most this many requests, or this long, per wake-up of the event loop. */
#define BATCH_REQUESTS 256
#define BATCH_NS 2000000u
/* The longest wait for a next request that a session may ask for. */
#define MAX_SPIN_MICROS 1000
/* A token is (generation << SLOT_BITS) | slot: below 2^53, so exact as a JS number. */
#define SLOT_BITS 21
#define SLOT_LIMIT (1u << SLOT_BITS)
#define NO_SLOT UINT32_MAX
#define MAX_SAFE_INTEGER 9007199254740991.0
/* Longest name or symlink target accepted from JS, in bytes. */
#define NAME_LIMIT 1024
#define TARGET_LIMIT 4096
/* Chunks one replyBufs may carry: a 1 MiB read in 4 KiB pages, unaligned, is 257. */
#define REPLY_CHUNKS_MAX 512

/* The flags of replyOpen and replyCreate (mirrored in src/fuse/lowlevel/session.ts). */
#define OPEN_DIRECT_IO 1
#define OPEN_KEEP_CACHE 2
#define OPEN_NONSEEKABLE 4
#define OPEN_CACHE_READDIR 8
#define OPEN_NOFLUSH 16

/* The operations JS may handle. The first four carry no request to answer. */
enum op {
  OP_INIT, OP_DESTROY, OP_FORGET, OP_INTERRUPT,
  OP_LOOKUP, OP_GETATTR, OP_SETATTR, OP_READLINK, OP_MKNOD, OP_MKDIR, OP_UNLINK, OP_RMDIR,
  OP_SYMLINK, OP_RENAME, OP_LINK, OP_OPEN, OP_READ, OP_WRITE, OP_FLUSH, OP_RELEASE, OP_FSYNC,
  OP_OPENDIR, OP_READDIR, OP_READDIRPLUS, OP_RELEASEDIR, OP_FSYNCDIR, OP_STATFS, OP_SETXATTR,
  OP_GETXATTR, OP_LISTXATTR, OP_REMOVEXATTR, OP_ACCESS, OP_CREATE, OP_FALLOCATE,
  OP_COUNT
};

/* The kinds of answer; each operation takes some of them. REPLY_OK is replyErr(req, 0). */
enum reply_kind {
  REPLY_ERR = 1 << 0, REPLY_OK = 1 << 1, REPLY_ENTRY = 1 << 2, REPLY_CREATE = 1 << 3,
  REPLY_ATTR = 1 << 4, REPLY_READLINK = 1 << 5, REPLY_OPEN = 1 << 6, REPLY_WRITE = 1 << 7,
  REPLY_BUF = 1 << 8, REPLY_DIRENTS = 1 << 9, REPLY_STATFS = 1 << 10, REPLY_XATTR = 1 << 11
};

static const struct {
  const char *name;
  unsigned replies;
} ops[OP_COUNT] = {
  [OP_INIT] = {"init", 0},
  [OP_DESTROY] = {"destroy", 0},
  [OP_FORGET] = {"forget", 0},
  [OP_INTERRUPT] = {"interrupt", 0},
  [OP_LOOKUP] = {"lookup", REPLY_ERR | REPLY_ENTRY},
  [OP_GETATTR] = {"getattr", REPLY_ERR | REPLY_ATTR},
  [OP_SETATTR] = {"setattr", REPLY_ERR | REPLY_ATTR},
  [OP_READLINK] = {"readlink", REPLY_ERR | REPLY_READLINK},
  [OP_MKNOD] = {"mknod", REPLY_ERR | REPLY_ENTRY},
  [OP_MKDIR] = {"mkdir", REPLY_ERR | REPLY_ENTRY},
  [OP_UNLINK] = {"unlink", REPLY_ERR | REPLY_OK},
  [OP_RMDIR] = {"rmdir", REPLY_ERR | REPLY_OK},
  [OP_SYMLINK] = {"symlink", REPLY_ERR | REPLY_ENTRY},
  [OP_RENAME] = {"rename", REPLY_ERR | REPLY_OK},
  [OP_LINK] = {"link", REPLY_ERR | REPLY_ENTRY},
  [OP_OPEN] = {"open", REPLY_ERR | REPLY_OPEN},
  [OP_READ] = {"read", REPLY_ERR | REPLY_BUF},
  [OP_WRITE] = {"write", REPLY_ERR | REPLY_WRITE},
  [OP_FLUSH] = {"flush", REPLY_ERR | REPLY_OK},
  [OP_RELEASE] = {"release", REPLY_ERR | REPLY_OK},
  [OP_FSYNC] = {"fsync", REPLY_ERR | REPLY_OK},
  [OP_OPENDIR] = {"opendir", REPLY_ERR | REPLY_OPEN},
  [OP_READDIR] = {"readdir", REPLY_ERR | REPLY_DIRENTS},
  [OP_READDIRPLUS] = {"readdirplus", REPLY_ERR | REPLY_DIRENTS},
  [OP_RELEASEDIR] = {"releasedir", REPLY_ERR | REPLY_OK},
  [OP_FSYNCDIR] = {"fsyncdir", REPLY_ERR | REPLY_OK},
  [OP_STATFS] = {"statfs", REPLY_ERR | REPLY_STATFS},
  [OP_SETXATTR] = {"setxattr", REPLY_ERR | REPLY_OK},
  [OP_GETXATTR] = {"getxattr", REPLY_ERR | REPLY_BUF | REPLY_XATTR},
  [OP_LISTXATTR] = {"listxattr", REPLY_ERR | REPLY_BUF | REPLY_XATTR},
  [OP_REMOVEXATTR] = {"removexattr", REPLY_ERR | REPLY_OK},
  [OP_ACCESS] = {"access", REPLY_ERR | REPLY_OK},
  [OP_CREATE] = {"create", REPLY_ERR | REPLY_CREATE},
  [OP_FALLOCATE] = {"fallocate", REPLY_ERR | REPLY_OK},
};

/* Property names read from and written to JS objects. */
enum key {
  KEY_INO, KEY_GENERATION, KEY_ATTR, KEY_ATTR_TIMEOUT, KEY_ENTRY_TIMEOUT, KEY_MODE, KEY_NLINK,
  KEY_UID, KEY_GID, KEY_RDEV, KEY_SIZE, KEY_BLOCKS, KEY_BLKSIZE, KEY_ATIME_SEC, KEY_ATIME_NSEC,
  KEY_MTIME_SEC, KEY_MTIME_NSEC, KEY_CTIME_SEC, KEY_CTIME_NSEC, KEY_NAME, KEY_OFFSET, KEY_ENTRY,
  KEY_BSIZE, KEY_FRSIZE, KEY_BFREE, KEY_BAVAIL, KEY_FILES, KEY_FFREE, KEY_FAVAIL, KEY_NAMEMAX,
  KEY_PID, KEY_UMASK, KEY_PROTO_MAJOR, KEY_PROTO_MINOR, KEY_CAPABLE, KEY_WANT, KEY_MAX_WRITE,
  KEY_MAX_READ, KEY_MAX_READAHEAD, KEY_WRITEBACK_CACHE,
  KEY_COUNT
};

static const char *const key_names[KEY_COUNT] = {
  "ino", "generation", "attr", "attrTimeout", "entryTimeout", "mode", "nlink",
  "uid", "gid", "rdev", "size", "blocks", "blksize", "atimeSec", "atimeNsec",
  "mtimeSec", "mtimeNsec", "ctimeSec", "ctimeNsec", "name", "offset", "entry",
  "bsize", "frsize", "bfree", "bavail", "files", "ffree", "favail", "namemax",
  "pid", "umask", "protoMajor", "protoMinor", "capable", "want", "maxWrite",
  "maxRead", "maxReadahead", "writebackCache",
};

struct session;

/* One entry of the pending-request table; free when `req` is NULL. */
struct slot {
  fuse_req_t req;
  struct session *session;
  /* Bumped each time the slot is freed; never 0. */
  uint32_t generation;
  /* The generation of the request a closing session answered for JS, or 0. */
  uint32_t cancelled;
  /* read, write, readdir: the byte count asked for; getxattr, listxattr: the buffer size. */
  uint32_t size;
  uint32_t next_free;
  uint8_t op;
};

/* Per addon instance (one per JS environment). */
struct addon {
  struct slot *slots;
  uint32_t slot_count;
  uint32_t free_head;
};

struct session {
  struct addon *addon;
  napi_env env;
  struct fuse_session *se;
  struct fuse_lowlevel_ops ll;
  struct fuse_buf buf;
  uv_poll_t poll;
  napi_ref handlers[OP_COUNT];
  napi_ref on_error;
  napi_ref on_gone;
  /* Holds the JS session object while the session is open, so it is never collected first. */
  napi_ref self;
  napi_async_context async_context;
  bool writeback_cache;
  uint32_t max_write;
  uint32_t max_read;
  uint64_t spin_ns;
  unsigned notifications;
  /* Inside fuse_session_process_buf: closing must wait until it returns. */
  bool dispatching;
  /* This batch left a request for JS to answer later (from a promise job). */
  bool left_pending;
  /* Requests answered outside a batch since the count was last cleared. */
  unsigned late_answers;
  bool close_requested;
  /* The kernel ended the session (unmounted, or the connection was aborted). */
  bool gone;
  bool closed;
  /* The JS environment is being torn down: no more calls into JS. */
  bool tearing_down;
  bool poll_closed;
  bool finalized;
};

/* ---- errors -------------------------------------------------------------------------------- */

enum throw_kind { THROW_ERROR, THROW_TYPE, THROW_RANGE };

/* The last message libfuse logged, for the error thrown when mounting fails. */
static char last_fuse_log[512];

/* Throws a formatted error unless an exception is already pending. */
static void throw_formatted(napi_env env, enum throw_kind kind, const char *code, const char *fmt, ...) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  char message[768];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(message, sizeof message, fmt, ap);
  va_end(ap);
  switch (kind) {
    case THROW_TYPE: napi_throw_type_error(env, code, message); break;
    case THROW_RANGE: napi_throw_range_error(env, code, message); break;
    case THROW_ERROR: napi_throw_error(env, code, message); break;
  }
}

#define THROW_TYPE_ERROR(env, ...) throw_formatted(env, THROW_TYPE, "ERR_INVALID_ARG_TYPE", __VA_ARGS__)
#define THROW_RANGE_ERROR(env, ...) throw_formatted(env, THROW_RANGE, "ERR_OUT_OF_RANGE", __VA_ARGS__)

/* Makes sure a failed N-API call leaves an exception for JS to see. */
static void throw_napi_failure(napi_env env) {
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  throw_formatted(env, THROW_ERROR, "ERR_FUSE_NAPI", "fuse session: %s",
                  info != NULL && info->error_message != NULL ? info->error_message : "N-API call failed");
}

#define CHECK(env, call)                                                                          \
  do {                                                                                            \
    if ((call) != napi_ok) {                                                                      \
      throw_napi_failure(env);                                                                    \
      return NULL;                                                                                \
    }                                                                                             \
  } while (0)

/* libfuse's messages still go to stderr, as they would by default; the last one is kept. */
static void on_fuse_log(enum fuse_log_level level, const char *fmt, va_list ap) {
  (void)level;
  va_list copy;
  va_copy(copy, ap);
  vsnprintf(last_fuse_log, sizeof last_fuse_log, fmt, copy);
  va_end(copy);
  size_t length = strlen(last_fuse_log);
  while (length > 0 && last_fuse_log[length - 1] == '\n') last_fuse_log[--length] = '\0';
  fprintf(stderr, "%s\n", last_fuse_log);
}

/* ---- reading JS values ------------------------------------------------------------------------ */

/* Reads `value` as an integer in [min, max]; throws and returns false otherwise. */
static bool to_integer(napi_env env, napi_value value, const char *what, double min, double max, int64_t *out) {
  double number = 0;
  if (napi_get_value_double(env, value, &number) != napi_ok) {
    THROW_TYPE_ERROR(env, "%s must be a number", what);
    return false;
  }
  if (!(number >= min && number <= max) || number != (double)(int64_t)number) {
    THROW_RANGE_ERROR(env, "%s must be an integer from %.0f to %.0f", what, min, max);
    return false;
  }
  *out = (int64_t)number;
  return true;
}

/* Reads obj[key]; false after throwing. */
static bool get_property(napi_env env, napi_value obj, enum key key, napi_value *out) {
  if (napi_get_named_property(env, obj, key_names[key], out) != napi_ok) {
    throw_napi_failure(env);
    return false;
  }
  return true;
}

static bool is_undefined(napi_env env, napi_value value) {
  napi_valuetype type = napi_undefined;
  napi_typeof(env, value, &type);
  return type == napi_undefined;
}

/* Reads obj[key] as an integer in [min, max]; an absent property reads as 0 unless required. */
static bool get_integer(napi_env env, napi_value obj, enum key key, bool required,
                        double min, double max, int64_t *out) {
  napi_value value;
  if (!get_property(env, obj, key, &value)) return false;
  if (!required && is_undefined(env, value)) {
    *out = 0;
    return true;
  }
  return to_integer(env, value, key_names[key], min, max, out);
}

/* Reads obj[key] as a number of seconds, 0 if absent. */
static bool get_seconds(napi_env env, napi_value obj, enum key key, double *out) {
  napi_value value;
  if (!get_property(env, obj, key, &value)) return false;
  *out = 0;
  if (is_undefined(env, value)) return true;
  if (napi_get_value_double(env, value, out) != napi_ok || !(*out >= 0)) {
    THROW_TYPE_ERROR(env, "%s must be a number of seconds, 0 or more", key_names[key]);
    return false;
  }
  return true;
}

static bool require_object(napi_env env, napi_value value, const char *what) {
  napi_valuetype type = napi_undefined;
  napi_typeof(env, value, &type);
  if (type != napi_object) {
    THROW_TYPE_ERROR(env, "%s must be an object", what);
    return false;
  }
  return true;
}

/* Copies a JS string into `buf` (`size` bytes with its NUL); false after throwing. */
static bool get_string(napi_env env, napi_value value, const char *what, char *buf, size_t size, size_t *length) {
  size_t needed = 0;
  if (napi_get_value_string_utf8(env, value, NULL, 0, &needed) != napi_ok) {
    THROW_TYPE_ERROR(env, "%s must be a string", what);
    return false;
  }
  if (needed >= size) {
    THROW_RANGE_ERROR(env, "%s is longer than %zu bytes", what, size - 1);
    return false;
  }
  napi_get_value_string_utf8(env, value, buf, size, length);
  return true;
}

/* Fills `st` from a JS Attr: times as seconds plus nanoseconds. */
static bool read_attr(napi_env env, napi_value obj, struct stat *st) {
  if (!require_object(env, obj, "attr")) return false;
  memset(st, 0, sizeof *st);
  int64_t v;
#define FIELD(key, required, min, max, target)                                                    \
  do {                                                                                            \
    if (!get_integer(env, obj, key, required, min, max, &v)) return false;                \
    target = v;                                                                                   \
  } while (0)
  FIELD(KEY_INO, true, 0, MAX_SAFE_INTEGER, st->st_ino);
  FIELD(KEY_MODE, true, 0, UINT32_MAX, st->st_mode);
  FIELD(KEY_NLINK, false, 0, UINT32_MAX, st->st_nlink);
  FIELD(KEY_UID, false, 0, UINT32_MAX, st->st_uid);
  FIELD(KEY_GID, false, 0, UINT32_MAX, st->st_gid);
  FIELD(KEY_RDEV, false, 0, UINT32_MAX, st->st_rdev);
  FIELD(KEY_SIZE, false, 0, MAX_SAFE_INTEGER, st->st_size);
  FIELD(KEY_BLOCKS, false, 0, MAX_SAFE_INTEGER, st->st_blocks);
  FIELD(KEY_BLKSIZE, false, 0, UINT32_MAX, st->st_blksize);
  FIELD(KEY_ATIME_SEC, false, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER, st->st_atim.tv_sec);
  FIELD(KEY_ATIME_NSEC, false, 0, 999999999, st->st_atim.tv_nsec);
  FIELD(KEY_MTIME_SEC, false, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER, st->st_mtim.tv_sec);
  FIELD(KEY_MTIME_NSEC, false, 0, 999999999, st->st_mtim.tv_nsec);
  FIELD(KEY_CTIME_SEC, false, -MAX_SAFE_INTEGER, MAX_SAFE_INTEGER, st->st_ctim.tv_sec);
  FIELD(KEY_CTIME_NSEC, false, 0, 999999999, st->st_ctim.tv_nsec);
#undef FIELD
  return true;
}

/* Fills `e` from a JS Entry {ino, generation, attr, attrTimeout, entryTimeout}. */
static bool read_entry(napi_env env, napi_value obj, struct fuse_entry_param *e) {
  if (!require_object(env, obj, "entry")) return false;
  memset(e, 0, sizeof *e);
  int64_t ino, generation;
  napi_value attr;
  if (!get_integer(env, obj, KEY_INO, true, 0, MAX_SAFE_INTEGER, &ino) ||
      !get_integer(env, obj, KEY_GENERATION, false, 0, MAX_SAFE_INTEGER, &generation) ||
      !get_property(env, obj, KEY_ATTR, &attr) || !read_attr(env, attr, &e->attr) ||
      !get_seconds(env, obj, KEY_ATTR_TIMEOUT, &e->attr_timeout) ||
      !get_seconds(env, obj, KEY_ENTRY_TIMEOUT, &e->entry_timeout)) {
    return false;
  }
  e->ino = (fuse_ino_t)ino;
  e->generation = (uint64_t)generation;
  return true;
}

/* ---- the pending-request table ---------------------------------------------------------------- */

static uint32_t next_generation(uint32_t generation) {
  return generation == UINT32_MAX ? 1 : generation + 1;
}

/* Takes a free slot for `req`; NO_SLOT when the table cannot grow. */
static uint32_t slot_take(struct addon *addon, struct session *s, fuse_req_t req, enum op op, size_t size) {
  if (addon->free_head == NO_SLOT) {
    uint32_t count = addon->slot_count == 0 ? 64 : addon->slot_count * 2;
    if (count > SLOT_LIMIT) return NO_SLOT;
    struct slot *grown = realloc(addon->slots, count * sizeof *grown);
    if (grown == NULL) return NO_SLOT;
    for (uint32_t i = addon->slot_count; i < count; i++) {
      grown[i] = (struct slot){.generation = 1, .next_free = i + 1 < count ? i + 1 : NO_SLOT};
    }
    addon->free_head = addon->slot_count;
    addon->slots = grown;
    addon->slot_count = count;
  }
  uint32_t index = addon->free_head;
  struct slot *slot = &addon->slots[index];
  addon->free_head = slot->next_free;
  slot->req = req;
  slot->session = s;
  slot->op = (uint8_t)op;
  slot->size = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
  return index;
}

static void slot_free(struct addon *addon, uint32_t index) {
  struct slot *slot = &addon->slots[index];
  slot->req = NULL;
  slot->session = NULL;
  slot->generation = next_generation(slot->generation);
  slot->next_free = addon->free_head;
  addon->free_head = index;
}

static uint64_t token_of(struct addon *addon, uint32_t index) {
  return ((uint64_t)addon->slots[index].generation << SLOT_BITS) | index;
}

/* The slot of a token whose request is still pending, or NO_SLOT. */
static uint32_t live_slot(struct addon *addon, uint64_t token) {
  uint32_t index = (uint32_t)(token & (SLOT_LIMIT - 1));
  uint32_t generation = (uint32_t)(token >> SLOT_BITS);
  if (index >= addon->slot_count) return NO_SLOT;
  struct slot *slot = &addon->slots[index];
  return slot->req != NULL && slot->generation == generation ? index : NO_SLOT;
}

enum lookup_result { REQUEST_LIVE, REQUEST_CANCELLED, REQUEST_THREW };

/* Resolves a JS token to a pending request that accepts a reply of `kind`. */
static enum lookup_result take_request(napi_env env, struct addon *addon, napi_value value, unsigned kind,
                                       uint32_t *index_out) {
  int64_t token;
  if (!to_integer(env, value, "req", 0, MAX_SAFE_INTEGER, &token)) return REQUEST_THREW;
  uint32_t index = live_slot(addon, (uint64_t)token);
  if (index == NO_SLOT) {
    uint32_t slot = (uint32_t)((uint64_t)token & (SLOT_LIMIT - 1));
    uint32_t generation = (uint32_t)((uint64_t)token >> SLOT_BITS);
    if (slot < addon->slot_count && generation != 0 && addon->slots[slot].cancelled == generation) {
      return REQUEST_CANCELLED;
    }
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_REQUEST_DONE", "request %.0f was already answered",
                    (double)token);
    return REQUEST_THREW;
  }
  enum op op = addon->slots[index].op;
  if ((ops[op].replies & kind) == 0) {
    throw_formatted(env, THROW_TYPE, "ERR_FUSE_REPLY_KIND", "a %s request cannot take this reply", ops[op].name);
    return REQUEST_THREW;
  }
  *index_out = index;
  return REQUEST_LIVE;
}

/* ---- calling JS ---------------------------------------------------------------------------- */

static struct addon *addon_of(napi_env env) {
  void *data = NULL;
  napi_get_instance_data(env, &data);
  return data;
}

static napi_value number_value(napi_env env, int64_t number) {
  napi_value value = NULL;
  napi_create_int64(env, number, &value);
  return value;
}

static napi_value string_value(napi_env env, const char *text) {
  napi_value value = NULL;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &value);
  return value;
}

static napi_value boolean_value(napi_env env, bool flag) {
  napi_value value = NULL;
  napi_get_boolean(env, flag, &value);
  return value;
}

static napi_value fh_value(napi_env env, const struct fuse_file_info *fi) {
  napi_value value = NULL;
  if (fi == NULL) napi_get_undefined(env, &value);
  else napi_create_int64(env, (int64_t)fi->fh, &value);
  return value;
}

static void set_key(napi_env env, napi_value obj, enum key key, napi_value value) {
  napi_set_named_property(env, obj, key_names[key], value);
}

/* Hands a handler's error to onError, or to stderr when there is none or it throws too. */
static void report_error(struct session *s, enum op op, napi_value error) {
  napi_env env = s->env;
  napi_value callback, undefined, argv[2], result;
  napi_get_undefined(env, &undefined);
  argv[0] = error != NULL ? error : undefined;
  argv[1] = string_value(env, ops[op].name);
  if (s->on_error != NULL && napi_get_reference_value(env, s->on_error, &callback) == napi_ok &&
      napi_call_function(env, undefined, callback, 2, argv, &result) == napi_ok) {
    return;
  }
  napi_value ignored;
  napi_get_and_clear_last_exception(env, &ignored);
  fprintf(stderr, "fuse session: the %s handler failed and onError could not report it\n", ops[op].name);
}

/*
 * Calls the JS handler of `op`. If it throws (or the call cannot be made), the request of
 * `token`, when there is one still pending, is answered EIO and the error reported.
 */
static void call_handler(struct session *s, enum op op, size_t argc, napi_value *argv, uint64_t token, bool has_token) {
  napi_env env = s->env;
  napi_value handler, undefined, result;
  napi_status status = napi_get_reference_value(env, s->handlers[op], &handler);
  if (status == napi_ok) status = napi_get_undefined(env, &undefined);
  if (status == napi_ok) status = napi_call_function(env, undefined, handler, argc, argv, &result);
  if (status == napi_ok) return;
  napi_value error = NULL;
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) napi_get_and_clear_last_exception(env, &error);
  if (has_token) {
    uint32_t index = live_slot(s->addon, token);
    if (index != NO_SLOT) {
      fuse_reply_err(s->addon->slots[index].req, EIO);
      slot_free(s->addon, index);
    }
  }
  report_error(s, op, error);
}

/* libfuse calls this when the kernel interrupts a request JS has not answered yet. */
static void on_interrupt(fuse_req_t req, void *data) {
  struct session *s = fuse_req_userdata(req);
  uint64_t token = (uint64_t)(uintptr_t)data;
  uint32_t index = live_slot(s->addon, token);
  if (index == NO_SLOT || s->addon->slots[index].req != req || s->tearing_down) return;
  napi_value argv[1] = {number_value(s->env, (int64_t)token)};
  call_handler(s, OP_INTERRUPT, 1, argv, 0, false);
}

/*
 * Enters `req` in the table and makes argv[0] its token; when the table is full the request is
 * answered ENOMEM here and false returned.
 */
static bool start(struct session *s, fuse_req_t req, enum op op, size_t size, napi_value *argv, uint64_t *token) {
  uint32_t index = slot_take(s->addon, s, req, op, size);
  if (index == NO_SLOT) {
    fuse_reply_err(req, ENOMEM);
    return false;
  }
  *token = token_of(s->addon, index);
  argv[0] = number_value(s->env, (int64_t)*token);
  return true;
}

/* Calls the handler; a request still pending afterwards gets its interrupt watched. */
static void dispatch(struct session *s, enum op op, uint64_t token, size_t argc, napi_value *argv) {
  call_handler(s, op, argc, argv, token, true);
  uint32_t index = live_slot(s->addon, token);
  if (index == NO_SLOT) return;
  s->left_pending = true;
  if (s->handlers[OP_INTERRUPT] != NULL) {
    fuse_req_interrupt_func(s->addon->slots[index].req, on_interrupt, (void *)(uintptr_t)token);
  }
}

/* ---- the low-level operations ------------------------------------------------------------------ */

#define SESSION(req) ((struct session *)fuse_req_userdata(req))

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  struct session *s = userdata;
  // Splicing needs a pipe per thread and a write_buf handler; the copy into JS happens anyway.
  conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
  // The kernel keeps clearing set-user-ID bits on write, truncate and chown itself.
  conn->want &= ~(unsigned)FUSE_CAP_HANDLE_KILLPRIV;
  if (s->writeback_cache && (conn->capable & FUSE_CAP_WRITEBACK_CACHE)) conn->want |= FUSE_CAP_WRITEBACK_CACHE;
  if (s->max_write > 0) conn->max_write = s->max_write;
  // libfuse refuses an init whose max_read differs from the max_read mount option.
  if (s->max_read > 0) conn->max_read = s->max_read;
  if (s->handlers[OP_INIT] == NULL || s->tearing_down) return;
  napi_env env = s->env;
  napi_value info;
  if (napi_create_object(env, &info) != napi_ok) return;
  set_key(env, info, KEY_PROTO_MAJOR, number_value(env, conn->proto_major));
  set_key(env, info, KEY_PROTO_MINOR, number_value(env, conn->proto_minor));
  set_key(env, info, KEY_CAPABLE, number_value(env, conn->capable));
  set_key(env, info, KEY_WANT, number_value(env, conn->want));
  set_key(env, info, KEY_MAX_WRITE, number_value(env, conn->max_write));
  set_key(env, info, KEY_MAX_READ, number_value(env, conn->max_read));
  set_key(env, info, KEY_MAX_READAHEAD, number_value(env, conn->max_readahead));
  set_key(env, info, KEY_WRITEBACK_CACHE, boolean_value(env, (conn->want & FUSE_CAP_WRITEBACK_CACHE) != 0));
  call_handler(s, OP_INIT, 1, &info, 0, false);
}

static void ll_destroy(void *userdata) {
  struct session *s = userdata;
  if (s->handlers[OP_DESTROY] == NULL || s->tearing_down) return;
  napi_handle_scope scope;
  if (napi_open_handle_scope(s->env, &scope) != napi_ok) return;
  call_handler(s, OP_DESTROY, 0, NULL, 0, false);
  napi_close_handle_scope(s->env, scope);
}

static void forget_one(struct session *s, fuse_ino_t ino, uint64_t nlookup) {
  napi_value argv[2] = {number_value(s->env, (int64_t)ino), number_value(s->env, (int64_t)nlookup)};
  call_handler(s, OP_FORGET, 2, argv, 0, false);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  forget_one(SESSION(req), ino, nlookup);
  fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  struct session *s = SESSION(req);
  for (size_t i = 0; i < count; i++) {
    napi_handle_scope scope;
    if (napi_open_handle_scope(s->env, &scope) != napi_ok) break;
    forget_one(s, forgets[i].ino, forgets[i].nlookup);
    napi_close_handle_scope(s->env, scope);
  }
  fuse_reply_none(req);
}

/* The common shape: a request with an inode and nothing else. */
static void ino_only(fuse_req_t req, enum op op, fuse_ino_t ino) {
  struct session *s = SESSION(req);
  napi_value argv[2];
  uint64_t token;
  if (!start(s, req, op, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  dispatch(s, op, token, 2, argv);
}

/* The common shape: a request with an inode and an open handle. */
static void ino_fh(fuse_req_t req, enum op op, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[3];
  uint64_t token;
  if (!start(s, req, op, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = fh_value(s->env, fi);
  dispatch(s, op, token, 3, argv);
}

/* The common shape: a request about a name in a directory. */
static void parent_name(fuse_req_t req, enum op op, fuse_ino_t parent, const char *name) {
  struct session *s = SESSION(req);
  napi_value argv[3];
  uint64_t token;
  if (!start(s, req, op, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)parent);
  argv[2] = string_value(s->env, name);
  dispatch(s, op, token, 3, argv);
}

/* The common shape: an inode, an open handle and a flag, as in fsync(datasync). */
static void ino_flag_fh(fuse_req_t req, enum op op, fuse_ino_t ino, bool flag, struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[4];
  uint64_t token;
  if (!start(s, req, op, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = boolean_value(s->env, flag);
  argv[3] = fh_value(s->env, fi);
  dispatch(s, op, token, 4, argv);
}

/* The common shape: an inode and open flags (open, opendir). */
static void ino_open_flags(fuse_req_t req, enum op op, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[3];
  uint64_t token;
  if (!start(s, req, op, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = number_value(s->env, fi->flags);
  dispatch(s, op, token, 3, argv);
}

/* The common shape: a sized read at an offset (read, readdir, readdirplus). */
static void ino_size_offset(fuse_req_t req, enum op op, fuse_ino_t ino, size_t size, off_t off,
                            struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[5];
  uint64_t token;
  if (!start(s, req, op, size, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = number_value(s->env, (int64_t)size);
  argv[3] = number_value(s->env, off);
  argv[4] = fh_value(s->env, fi);
  dispatch(s, op, token, 5, argv);
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  parent_name(req, OP_LOOKUP, parent, name);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  ino_fh(req, OP_GETATTR, ino, fi);
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_env env = s->env;
  napi_value argv[5];
  uint64_t token;
  if (!start(s, req, OP_SETATTR, 0, argv, &token)) return;
  napi_value changes = NULL;
  napi_create_object(env, &changes);
  if (to_set & FUSE_SET_ATTR_MODE) set_key(env, changes, KEY_MODE, number_value(env, attr->st_mode));
  if (to_set & FUSE_SET_ATTR_UID) set_key(env, changes, KEY_UID, number_value(env, attr->st_uid));
  if (to_set & FUSE_SET_ATTR_GID) set_key(env, changes, KEY_GID, number_value(env, attr->st_gid));
  if (to_set & FUSE_SET_ATTR_SIZE) set_key(env, changes, KEY_SIZE, number_value(env, attr->st_size));
  if (to_set & FUSE_SET_ATTR_ATIME) {
    set_key(env, changes, KEY_ATIME_SEC, number_value(env, attr->st_atim.tv_sec));
    set_key(env, changes, KEY_ATIME_NSEC, number_value(env, attr->st_atim.tv_nsec));
  }
  if (to_set & FUSE_SET_ATTR_MTIME) {
    set_key(env, changes, KEY_MTIME_SEC, number_value(env, attr->st_mtim.tv_sec));
    set_key(env, changes, KEY_MTIME_NSEC, number_value(env, attr->st_mtim.tv_nsec));
  }
  if (to_set & FUSE_SET_ATTR_CTIME) {
    set_key(env, changes, KEY_CTIME_SEC, number_value(env, attr->st_ctim.tv_sec));
    set_key(env, changes, KEY_CTIME_NSEC, number_value(env, attr->st_ctim.tv_nsec));
  }
  argv[1] = number_value(env, (int64_t)ino);
  argv[2] = changes;
  argv[3] = number_value(env, to_set);
  argv[4] = fh_value(env, fi);
  dispatch(s, OP_SETATTR, token, 5, argv);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) {
  ino_only(req, OP_READLINK, ino);
}

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  struct session *s = SESSION(req);
  napi_value argv[5];
  uint64_t token;
  if (!start(s, req, OP_MKNOD, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)parent);
  argv[2] = string_value(s->env, name);
  argv[3] = number_value(s->env, mode);
  argv[4] = number_value(s->env, (int64_t)rdev);
  dispatch(s, OP_MKNOD, token, 5, argv);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  struct session *s = SESSION(req);
  napi_value argv[4];
  uint64_t token;
  if (!start(s, req, OP_MKDIR, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)parent);
  argv[2] = string_value(s->env, name);
  argv[3] = number_value(s->env, mode);
  dispatch(s, OP_MKDIR, token, 4, argv);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) {
  parent_name(req, OP_UNLINK, parent, name);
}

static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) {
  parent_name(req, OP_RMDIR, parent, name);
}

static void ll_symlink(fuse_req_t req, const char *target, fuse_ino_t parent, const char *name) {
  struct session *s = SESSION(req);
  napi_value argv[4];
  uint64_t token;
  if (!start(s, req, OP_SYMLINK, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)parent);
  argv[2] = string_value(s->env, name);
  argv[3] = string_value(s->env, target);
  dispatch(s, OP_SYMLINK, token, 4, argv);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t new_parent,
                      const char *new_name, unsigned int flags) {
  struct session *s = SESSION(req);
  napi_value argv[6];
  uint64_t token;
  if (!start(s, req, OP_RENAME, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)parent);
  argv[2] = string_value(s->env, name);
  argv[3] = number_value(s->env, (int64_t)new_parent);
  argv[4] = string_value(s->env, new_name);
  argv[5] = number_value(s->env, flags);
  dispatch(s, OP_RENAME, token, 6, argv);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t new_parent, const char *new_name) {
  struct session *s = SESSION(req);
  napi_value argv[4];
  uint64_t token;
  if (!start(s, req, OP_LINK, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = number_value(s->env, (int64_t)new_parent);
  argv[3] = string_value(s->env, new_name);
  dispatch(s, OP_LINK, token, 4, argv);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  ino_open_flags(req, OP_OPEN, ino, fi);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  ino_size_offset(req, OP_READ, ino, size, off, fi);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[5];
  uint64_t token;
  if (!start(s, req, OP_WRITE, size, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  // libfuse's receive buffer, lent for the length of the call instead of copied (a copy per
  // request is garbage the collector reclaims late: tens of MiB under a stream of 1 MiB writes).
  // The handler copies what it keeps; the buffer is detached when the call returns, so any later
  // use sees no bytes rather than the next request's.
  argv[2] = NULL;
  if (size == 0) napi_create_buffer(s->env, 0, NULL, &argv[2]);
  else napi_create_external_buffer(s->env, size, (void *)buf, NULL, NULL, &argv[2]);
  argv[3] = number_value(s->env, off);
  argv[4] = fh_value(s->env, fi);
  napi_value lent = argv[2];
  dispatch(s, OP_WRITE, token, 5, argv);
  napi_value backing;
  if (size > 0 && lent != NULL &&
      napi_get_typedarray_info(s->env, lent, NULL, NULL, NULL, &backing, NULL) == napi_ok) {
    napi_detach_arraybuffer(s->env, backing);
  }
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  ino_fh(req, OP_FLUSH, ino, fi);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[4];
  uint64_t token;
  if (!start(s, req, OP_RELEASE, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = fh_value(s->env, fi);
  argv[3] = number_value(s->env, fi->flags);
  dispatch(s, OP_RELEASE, token, 4, argv);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  ino_flag_fh(req, OP_FSYNC, ino, datasync != 0, fi);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  ino_open_flags(req, OP_OPENDIR, ino, fi);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  ino_size_offset(req, OP_READDIR, ino, size, off, fi);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  ino_size_offset(req, OP_READDIRPLUS, ino, size, off, fi);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  ino_fh(req, OP_RELEASEDIR, ino, fi);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  ino_flag_fh(req, OP_FSYNCDIR, ino, datasync != 0, fi);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) {
  ino_only(req, OP_STATFS, ino);
}

static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
  struct session *s = SESSION(req);
  napi_value argv[5];
  uint64_t token;
  if (!start(s, req, OP_SETXATTR, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = string_value(s->env, name);
  argv[3] = NULL;
  napi_create_buffer_copy(s->env, size, value, NULL, &argv[3]);
  argv[4] = number_value(s->env, flags);
  dispatch(s, OP_SETXATTR, token, 5, argv);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  struct session *s = SESSION(req);
  napi_value argv[4];
  uint64_t token;
  if (!start(s, req, OP_GETXATTR, size, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = string_value(s->env, name);
  argv[3] = number_value(s->env, (int64_t)size);
  dispatch(s, OP_GETXATTR, token, 4, argv);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  struct session *s = SESSION(req);
  napi_value argv[3];
  uint64_t token;
  if (!start(s, req, OP_LISTXATTR, size, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = number_value(s->env, (int64_t)size);
  dispatch(s, OP_LISTXATTR, token, 3, argv);
}

static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
  struct session *s = SESSION(req);
  napi_value argv[3];
  uint64_t token;
  if (!start(s, req, OP_REMOVEXATTR, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = string_value(s->env, name);
  dispatch(s, OP_REMOVEXATTR, token, 3, argv);
}

static void ll_access(fuse_req_t req, fuse_ino_t ino, int mask) {
  struct session *s = SESSION(req);
  napi_value argv[3];
  uint64_t token;
  if (!start(s, req, OP_ACCESS, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = number_value(s->env, mask);
  dispatch(s, OP_ACCESS, token, 3, argv);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[5];
  uint64_t token;
  if (!start(s, req, OP_CREATE, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)parent);
  argv[2] = string_value(s->env, name);
  argv[3] = number_value(s->env, mode);
  argv[4] = number_value(s->env, fi->flags);
  dispatch(s, OP_CREATE, token, 5, argv);
}

static void ll_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                         struct fuse_file_info *fi) {
  struct session *s = SESSION(req);
  napi_value argv[6];
  uint64_t token;
  if (!start(s, req, OP_FALLOCATE, 0, argv, &token)) return;
  argv[1] = number_value(s->env, (int64_t)ino);
  argv[2] = number_value(s->env, mode);
  argv[3] = number_value(s->env, offset);
  argv[4] = number_value(s->env, length);
  argv[5] = fh_value(s->env, fi);
  dispatch(s, OP_FALLOCATE, token, 6, argv);
}

/* Registers with libfuse the callback of an operation JS handles; libfuse's defaults (ENOSYS,
 * or success for open and opendir) answer the others without a trip into JS. */
static void install(struct fuse_lowlevel_ops *ll, enum op op) {
  switch (op) {
    case OP_INIT: break;
    case OP_DESTROY: break;
    case OP_INTERRUPT: break;
    case OP_FORGET: ll->forget = ll_forget; ll->forget_multi = ll_forget_multi; break;
    case OP_LOOKUP: ll->lookup = ll_lookup; break;
    case OP_GETATTR: ll->getattr = ll_getattr; break;
    case OP_SETATTR: ll->setattr = ll_setattr; break;
    case OP_READLINK: ll->readlink = ll_readlink; break;
    case OP_MKNOD: ll->mknod = ll_mknod; break;
    case OP_MKDIR: ll->mkdir = ll_mkdir; break;
    case OP_UNLINK: ll->unlink = ll_unlink; break;
    case OP_RMDIR: ll->rmdir = ll_rmdir; break;
    case OP_SYMLINK: ll->symlink = ll_symlink; break;
    case OP_RENAME: ll->rename = ll_rename; break;
    case OP_LINK: ll->link = ll_link; break;
    case OP_OPEN: ll->open = ll_open; break;
    case OP_READ: ll->read = ll_read; break;
    case OP_WRITE: ll->write = ll_write; break;
    case OP_FLUSH: ll->flush = ll_flush; break;
    case OP_RELEASE: ll->release = ll_release; break;
    case OP_FSYNC: ll->fsync = ll_fsync; break;
    case OP_OPENDIR: ll->opendir = ll_opendir; break;
    case OP_READDIR: ll->readdir = ll_readdir; break;
    case OP_READDIRPLUS: ll->readdirplus = ll_readdirplus; break;
    case OP_RELEASEDIR: ll->releasedir = ll_releasedir; break;
    case OP_FSYNCDIR: ll->fsyncdir = ll_fsyncdir; break;
    case OP_STATFS: ll->statfs = ll_statfs; break;
    case OP_SETXATTR: ll->setxattr = ll_setxattr; break;
    case OP_GETXATTR: ll->getxattr = ll_getxattr; break;
    case OP_LISTXATTR: ll->listxattr = ll_listxattr; break;
    case OP_REMOVEXATTR: ll->removexattr = ll_removexattr; break;
    case OP_ACCESS: ll->access = ll_access; break;
    case OP_CREATE: ll->create = ll_create; break;
    case OP_FALLOCATE: ll->fallocate = ll_fallocate; break;
    case OP_COUNT: break;
  }
}

/* ---- the session's life ---------------------------------------------------------------------- */

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void maybe_free(struct session *s) {
  if (s->poll_closed && s->finalized) free(s);
}

static void on_poll_closed(uv_handle_t *handle) {
  struct session *s = handle->data;
  s->poll_closed = true;
  maybe_free(s);
}

static void on_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  struct session *s = data;
  s->finalized = true;
  maybe_free(s);
}

static void on_env_cleanup(void *arg);

/*
 * Ends the session: the mount is detached lazily and the device closed (libfuse's unmount; the
 * kernel fails whatever still waits), requests JS has not answered are answered for it, and
 * libfuse's destroy runs (JS's destroy handler with it, unless the environment is going away).
 */
static void close_session(struct session *s) {
  napi_env env = s->env;
  struct addon *addon = s->addon;
  s->closed = true;
  uv_poll_stop(&s->poll);
  fuse_session_exit(s->se);
  fuse_session_unmount(s->se);
  for (uint32_t i = 0; i < addon->slot_count; i++) {
    struct slot *slot = &addon->slots[i];
    if (slot->req == NULL || slot->session != s) continue;
    fuse_reply_err(slot->req, ENOTCONN);
    slot->cancelled = slot->generation;
    slot_free(addon, i);
  }
  fuse_session_destroy(s->se);
  s->se = NULL;
  free(s->buf.mem);
  s->buf.mem = NULL;
  uv_close((uv_handle_t *)&s->poll, on_poll_closed);
  if (s->tearing_down) return;
  napi_remove_env_cleanup_hook(env, on_env_cleanup, s);
  for (int op = 0; op < OP_COUNT; op++) {
    if (s->handlers[op] != NULL) napi_delete_reference(env, s->handlers[op]);
    s->handlers[op] = NULL;
  }
  if (s->on_error != NULL) napi_delete_reference(env, s->on_error);
  if (s->on_gone != NULL) napi_delete_reference(env, s->on_gone);
  s->on_error = s->on_gone = NULL;
  napi_async_destroy(env, s->async_context);
  napi_delete_reference(env, s->self);
}

/* The environment is going away with the session open: unmount rather than leave a dead mount. */
static void on_env_cleanup(void *arg) {
  struct session *s = arg;
  s->tearing_down = true;
  if (!s->closed) close_session(s);
}

/* The kernel ended the session (errno 0: unmounted or aborted); JS hears it through onGone. */
static void session_gone(struct session *s, int error) {
  s->gone = true;
  uv_poll_stop(&s->poll);
  napi_value callback, undefined, argv[1], result;
  if (s->on_gone == NULL || napi_get_reference_value(s->env, s->on_gone, &callback) != napi_ok) return;
  napi_get_undefined(s->env, &undefined);
  argv[0] = number_value(s->env, error);
  if (napi_call_function(s->env, undefined, callback, 1, argv, &result) != napi_ok) {
    napi_value ignored;
    napi_get_and_clear_last_exception(s->env, &ignored);
    fprintf(stderr, "fuse session: onGone threw\n");
  }
}

/*
 * Receives and processes requests until none is waiting or the wake-up's budget (from `start`)
 * is spent. When none is waiting it spins for the next one if this batch handled a request (or
 * `spin` asks it to) and left none for promise jobs to answer.
 */
static void drain(struct session *s, uint64_t start, bool spin) {
  uint64_t spin_until = 0;
  unsigned handled = 0;
  s->left_pending = false;
  while (!s->closed && !s->gone) {
    int res = fuse_session_receive_buf(s->se, &s->buf);
    if (res == -EINTR) continue;
    if (res == -EAGAIN) {
      if (s->spin_ns == 0 || (handled == 0 && !spin) || s->left_pending) return;
      uint64_t now = now_ns();
      if (spin_until == 0) spin_until = now + s->spin_ns;
      if (now >= spin_until || now - start >= BATCH_NS) return;
      continue;
    }
    if (res <= 0) {
      session_gone(s, res == 0 ? 0 : -res);
      return;
    }
    spin_until = 0;
    napi_handle_scope scope;
    if (napi_open_handle_scope(s->env, &scope) != napi_ok) return;
    s->dispatching = true;
    fuse_session_process_buf(s->se, &s->buf);
    s->dispatching = false;
    napi_close_handle_scope(s->env, scope);
    if (s->close_requested) {
      close_session(s);
      return;
    }
    if (++handled >= BATCH_REQUESTS || now_ns() - start >= BATCH_NS) return;
  }
}

/*
 * The device is readable (or failed): drain it in batches, each inside a callback scope of its
 * own so that promise jobs run between them. A batch follows another while the promise jobs of
 * the one before answered requests, within the wake-up's budget.
 */
static void on_readable(uv_poll_t *poll, int status, int events) {
  (void)events;
  struct session *s = poll->data;
  napi_env env = s->env;
  uint64_t start = now_ns();
  bool spin = false;
  do {
    napi_handle_scope scope;
    napi_callback_scope callback_scope;
    napi_value resource;
    if (napi_open_handle_scope(env, &scope) != napi_ok) return;
    bool opened = napi_get_global(env, &resource) == napi_ok &&
                  napi_open_callback_scope(env, resource, s->async_context, &callback_scope) == napi_ok;
    if (opened) {
      if (status < 0) session_gone(s, -status);
      else drain(s, start, spin);
      s->late_answers = 0;
      napi_close_callback_scope(env, callback_scope);
    }
    napi_close_handle_scope(env, scope);
    if (!opened || status < 0) return;
    spin = s->late_answers > 0;
  } while (spin && !s->closed && !s->gone && now_ns() - start < BATCH_NS);
}

/* The session behind a JS session handle; NULL after throwing. */
static struct session *session_of(napi_env env, napi_value value) {
  void *data = NULL;
  napi_valuetype type = napi_undefined;
  napi_typeof(env, value, &type);
  if (type != napi_external || napi_get_value_external(env, value, &data) != napi_ok || data == NULL) {
    THROW_TYPE_ERROR(env, "session must be a handle returned by mount");
    return NULL;
  }
  return data;
}

/* Reads config[name] as a function reference; NULL (no exception) when absent. */
static bool get_callback(napi_env env, napi_value config, const char *name, napi_ref *out) {
  napi_value value;
  napi_valuetype type = napi_undefined;
  *out = NULL;
  if (napi_get_named_property(env, config, name, &value) != napi_ok) return false;
  napi_typeof(env, value, &type);
  if (type == napi_undefined) return true;
  if (type != napi_function) {
    THROW_TYPE_ERROR(env, "%s must be a function", name);
    return false;
  }
  return napi_create_reference(env, value, 1, out) == napi_ok;
}

/* Reads config[name] as an integer in [0, max]; 0 when absent. */
static bool get_config_integer(napi_env env, napi_value config, const char *name, double max, int64_t *out) {
  napi_value value;
  *out = 0;
  if (napi_get_named_property(env, config, name, &value) != napi_ok) return false;
  if (is_undefined(env, value)) return true;
  return to_integer(env, value, name, 0, max, out);
}

/* Releases what mount took before it failed. */
static void discard(napi_env env, struct session *s) {
  for (int op = 0; op < OP_COUNT; op++) {
    if (s->handlers[op] != NULL) napi_delete_reference(env, s->handlers[op]);
  }
  if (s->on_error != NULL) napi_delete_reference(env, s->on_error);
  if (s->on_gone != NULL) napi_delete_reference(env, s->on_gone);
  free(s);
}

/*
 * mount(mountpoint, options, config, handlers): the session handle.
 * options: libfuse -o options, one per string. config: {writebackCache, maxWrite, maxRead,
 * spinMicros, onError(error, op), onGone(errno)}. handlers: {lookup(req, parent, name), ...}.
 */
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    THROW_TYPE_ERROR(env, "mount(mountpoint, options, config, handlers)");
    return NULL;
  }
  char mountpoint[TARGET_LIMIT + 1];
  size_t length;
  if (!get_string(env, argv[0], "mountpoint", mountpoint, sizeof mountpoint, &length)) return NULL;
  bool is_array = false;
  napi_is_array(env, argv[1], &is_array);
  if (!is_array) {
    THROW_TYPE_ERROR(env, "options must be an array of strings");
    return NULL;
  }
  if (!require_object(env, argv[2], "config") || !require_object(env, argv[3], "handlers")) return NULL;

  struct session *s = calloc(1, sizeof *s);
  if (s == NULL) {
    throw_formatted(env, THROW_ERROR, "ENOMEM", "out of memory");
    return NULL;
  }
  s->env = env;
  s->addon = addon_of(env);
  int64_t max_write, max_read, spin_micros;
  napi_value flag;
  bool writeback = false;
  if (!get_config_integer(env, argv[2], "maxWrite", UINT32_MAX, &max_write) ||
      !get_config_integer(env, argv[2], "maxRead", UINT32_MAX, &max_read) ||
      !get_config_integer(env, argv[2], "spinMicros", MAX_SPIN_MICROS, &spin_micros) ||
      napi_get_named_property(env, argv[2], "writebackCache", &flag) != napi_ok ||
      (!is_undefined(env, flag) && napi_get_value_bool(env, flag, &writeback) != napi_ok) ||
      !get_callback(env, argv[2], "onError", &s->on_error) ||
      !get_callback(env, argv[2], "onGone", &s->on_gone)) {
    throw_napi_failure(env);
    discard(env, s);
    return NULL;
  }
  s->writeback_cache = writeback;
  s->max_write = (uint32_t)max_write;
  s->max_read = (uint32_t)max_read;
  s->spin_ns = (uint64_t)spin_micros * 1000u;
  s->ll.init = ll_init;
  s->ll.destroy = ll_destroy;
  for (int op = 0; op < OP_COUNT; op++) {
    if (!get_callback(env, argv[3], ops[op].name, &s->handlers[op])) {
      throw_napi_failure(env);
      discard(env, s);
      return NULL;
    }
    if (s->handlers[op] != NULL) install(&s->ll, op);
  }

  // libfuse's arguments: a program name, then -o for each option.
  struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
  bool ok = fuse_opt_add_arg(&args, "snapfs") == 0;
  uint32_t count = 0;
  napi_get_array_length(env, argv[1], &count);
  for (uint32_t i = 0; ok && i < count; i++) {
    napi_value item;
    char option[TARGET_LIMIT + 1];
    ok = napi_get_element(env, argv[1], i, &item) == napi_ok &&
         get_string(env, item, "option", option, sizeof option, &length) &&
         fuse_opt_add_arg(&args, "-o") == 0 && fuse_opt_add_arg(&args, option) == 0;
  }
  if (ok && s->max_read > 0) {
    char option[32];
    snprintf(option, sizeof option, "max_read=%u", s->max_read);
    ok = fuse_opt_add_arg(&args, "-o") == 0 && fuse_opt_add_arg(&args, option) == 0;
  }
  if (!ok) {
    fuse_opt_free_args(&args);
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_MOUNT", "cannot build the mount options");
    discard(env, s);
    return NULL;
  }
  last_fuse_log[0] = '\0';
  s->se = fuse_session_new(&args, &s->ll, sizeof s->ll, s);
  fuse_opt_free_args(&args);
  if (s->se == NULL) {
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_MOUNT", "fuse_session_new failed: %s", last_fuse_log);
    discard(env, s);
    return NULL;
  }
  if (fuse_session_mount(s->se, mountpoint) != 0) {
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_MOUNT", "cannot mount %s: %s", mountpoint, last_fuse_log);
    fuse_session_destroy(s->se);
    discard(env, s);
    return NULL;
  }

  int fd = fuse_session_fd(s->se);
  struct uv_loop_s *loop = NULL;
  int flags = fcntl(fd, F_GETFL);
  int poll_error = 0;
  if (flags == -1 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) == -1) poll_error = errno;
  else if (napi_get_uv_event_loop(env, &loop) != napi_ok) poll_error = EINVAL;
  else poll_error = -uv_poll_init(loop, &s->poll, fd);
  if (poll_error != 0) {
    fuse_session_unmount(s->se);
    fuse_session_destroy(s->se);
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_MOUNT", "cannot watch the FUSE device: %s", strerror(poll_error));
    discard(env, s);
    return NULL;
  }
  s->poll.data = s;
  uv_poll_start(&s->poll, UV_READABLE, on_readable);

  napi_value handle, name;
  if (napi_create_string_utf8(env, "snapfs:fuse", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, NULL, name, &s->async_context) != napi_ok ||
      napi_create_external(env, s, on_finalize, NULL, &handle) != napi_ok ||
      napi_create_reference(env, handle, 1, &s->self) != napi_ok ||
      napi_add_env_cleanup_hook(env, on_env_cleanup, s) != napi_ok) {
    // Too broken to hand back: unmount and leak the session rather than free a watched handle.
    s->tearing_down = true;
    close_session(s);
    throw_napi_failure(env);
    return NULL;
  }
  return handle;
}

/* close(session): ends the session now (see close_session); inside a handler, once it returns. */
static napi_value js_close(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct session *s = argc < 1 ? NULL : session_of(env, argv[0]);
  if (s == NULL) return NULL;
  if (s->closed) return NULL;
  if (s->notifications > 0) {
    throw_formatted(env, THROW_ERROR, "EBUSY", "close: %u notifications still in flight", s->notifications);
    return NULL;
  }
  if (s->dispatching) s->close_requested = true;
  else close_session(s);
  return NULL;
}

/* ---- notifications --------------------------------------------------------------------------- */

struct notification {
  struct session *session;
  napi_ref handle;
  napi_async_work work;
  napi_deferred deferred;
  fuse_ino_t ino;
  off_t offset;
  off_t length;
  /* NULL for an inode invalidation, else the entry's name. */
  char *name;
  int result;
};

/* On a thread of libuv's pool: the kernel may block this write until the JS thread answers. */
static void notify_execute(napi_env env, void *data) {
  (void)env;
  struct notification *n = data;
  struct fuse_session *se = n->session->se;
  n->result = n->name == NULL ? fuse_lowlevel_notify_inval_inode(se, n->ino, n->offset, n->length)
                              : fuse_lowlevel_notify_inval_entry(se, n->ino, n->name, strlen(n->name));
}

static void notify_complete(napi_env env, napi_status status, void *data) {
  struct notification *n = data;
  n->session->notifications--;
  int error = status == napi_cancelled ? ECANCELED : -n->result;
  if (error == 0) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, n->deferred, undefined);
  } else {
    napi_value code, message, failure;
    char text[128];
    snprintf(text, sizeof text, "%s: %s", n->name == NULL ? "notify_inval_inode" : "notify_inval_entry",
             strerror(error));
    napi_create_string_utf8(env, "ERR_FUSE_NOTIFY", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &message);
    napi_create_error(env, code, message, &failure);
    napi_set_named_property(env, failure, "errno", number_value(env, error));
    napi_reject_deferred(env, n->deferred, failure);
  }
  napi_delete_async_work(env, n->work);
  napi_delete_reference(env, n->handle);
  free(n->name);
  free(n);
}

/* Queues a notification of an open session; returns its promise, or NULL after throwing. */
static napi_value queue_notification(napi_env env, napi_value handle, struct notification *n) {
  napi_value promise, name;
  struct session *s = n->session;
  if (s->closed || s->tearing_down) {
    free(n->name);
    free(n);
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_CLOSED", "the session is closed");
    return NULL;
  }
  if (napi_create_promise(env, &n->deferred, &promise) != napi_ok ||
      napi_create_string_utf8(env, "snapfs:fuse-notify", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_create_reference(env, handle, 1, &n->handle) != napi_ok ||
      napi_create_async_work(env, NULL, name, notify_execute, notify_complete, n, &n->work) != napi_ok ||
      napi_queue_async_work(env, n->work) != napi_ok) {
    // Not queued: nothing runs on the pool. The promise, if made, is left unsettled and dropped.
    if (n->handle != NULL) napi_delete_reference(env, n->handle);
    if (n->work != NULL) napi_delete_async_work(env, n->work);
    free(n->name);
    free(n);
    throw_napi_failure(env);
    return NULL;
  }
  s->notifications++;
  return promise;
}

/* notifyInvalInode(session, ino, offset, length): drops cached data (offset -1: attributes only). */
static napi_value js_notify_inval_inode(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 4) {
    THROW_TYPE_ERROR(env, "notifyInvalInode(session, ino, offset, length)");
    return NULL;
  }
  struct session *s = session_of(env, argv[0]);
  int64_t ino, offset, length;
  if (s == NULL || !to_integer(env, argv[1], "ino", 1, MAX_SAFE_INTEGER, &ino) ||
      !to_integer(env, argv[2], "offset", -1, MAX_SAFE_INTEGER, &offset) ||
      !to_integer(env, argv[3], "length", 0, MAX_SAFE_INTEGER, &length)) {
    return NULL;
  }
  struct notification *n = calloc(1, sizeof *n);
  if (n == NULL) {
    throw_formatted(env, THROW_ERROR, "ENOMEM", "out of memory");
    return NULL;
  }
  n->session = s;
  n->ino = (fuse_ino_t)ino;
  n->offset = offset;
  n->length = length;
  return queue_notification(env, argv[0], n);
}

/* notifyInvalEntry(session, parent, name): drops the kernel's cached name and its parent's attributes. */
static napi_value js_notify_inval_entry(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 3) {
    THROW_TYPE_ERROR(env, "notifyInvalEntry(session, parent, name)");
    return NULL;
  }
  struct session *s = session_of(env, argv[0]);
  int64_t parent;
  char name[NAME_LIMIT];
  size_t length;
  if (s == NULL || !to_integer(env, argv[1], "parent", 1, MAX_SAFE_INTEGER, &parent) ||
      !get_string(env, argv[2], "name", name, sizeof name, &length)) {
    return NULL;
  }
  struct notification *n = calloc(1, sizeof *n);
  if (n == NULL || (n->name = strdup(name)) == NULL) {
    free(n);
    throw_formatted(env, THROW_ERROR, "ENOMEM", "out of memory");
    return NULL;
  }
  n->session = s;
  n->ino = (fuse_ino_t)parent;
  return queue_notification(env, argv[0], n);
}

/* ---- replies --------------------------------------------------------------------------------- */

/* What a reply returns when the kernel did not take it: false, or 0 entries for replyReaddir. */
static napi_value not_taken(napi_env env, unsigned kind) {
  return kind == REPLY_DIRENTS ? number_value(env, 0) : boolean_value(env, false);
}

/* Reads the callback's arguments and resolves argv[0] to a pending request of `kind`. */
#define REPLY_PROLOGUE(count, kind)                                                               \
  size_t argc = (count);                                                                          \
  napi_value argv[(count)];                                                                       \
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));                               \
  if (argc < (count)) {                                                                           \
    THROW_TYPE_ERROR(env, "expected %d arguments", (count));                                      \
    return NULL;                                                                                  \
  }                                                                                               \
  struct addon *addon = addon_of(env);                                                            \
  uint32_t index = 0;                                                                             \
  switch (take_request(env, addon, argv[0], (kind), &index)) {                                    \
    case REQUEST_THREW: return NULL;                                                              \
    case REQUEST_CANCELLED: return not_taken(env, (kind));                                        \
    case REQUEST_LIVE: break;                                                                     \
  }                                                                                               \
  struct slot *slot = &addon->slots[index]

/* Frees the request's slot after libfuse answered it; true if the kernel took the answer. */
static napi_value replied(napi_env env, struct addon *addon, uint32_t index, int result) {
  struct session *s = addon->slots[index].session;
  if (s != NULL && !s->dispatching) s->late_answers++;
  slot_free(addon, index);
  return boolean_value(env, result == 0);
}

/* replyErr(req, errno): errno > 0 fails the request; 0 is success for requests without data. */
static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int64_t error;
  if (argc < 2 || !to_integer(env, argv[1], "errno", 0, 4095, &error)) {
    if (argc < 2) THROW_TYPE_ERROR(env, "replyErr(req, errno)");
    return NULL;
  }
  struct addon *addon = addon_of(env);
  uint32_t index = 0;
  switch (take_request(env, addon, argv[0], error == 0 ? REPLY_OK : REPLY_ERR, &index)) {
    case REQUEST_THREW: return NULL;
    case REQUEST_CANCELLED: return boolean_value(env, false);
    case REQUEST_LIVE: break;
  }
  return replied(env, addon, index, fuse_reply_err(addon->slots[index].req, (int)error));
}

/* replyEntry(req, entry). */
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_ENTRY);
  struct fuse_entry_param e;
  if (!read_entry(env, argv[1], &e)) return NULL;
  return replied(env, addon, index, fuse_reply_entry(slot->req, &e));
}

/* Reads a file handle and open flags (OPEN_*) into `fi`. */
static bool read_open(napi_env env, napi_value fh_value_in, napi_value flags_value, struct fuse_file_info *fi) {
  int64_t fh, flags;
  if (!to_integer(env, fh_value_in, "fh", 0, MAX_SAFE_INTEGER, &fh) ||
      !to_integer(env, flags_value, "flags", 0, 31, &flags)) {
    return false;
  }
  memset(fi, 0, sizeof *fi);
  fi->fh = (uint64_t)fh;
  fi->direct_io = (flags & OPEN_DIRECT_IO) != 0;
  fi->keep_cache = (flags & OPEN_KEEP_CACHE) != 0;
  fi->nonseekable = (flags & OPEN_NONSEEKABLE) != 0;
  fi->cache_readdir = (flags & OPEN_CACHE_READDIR) != 0;
  fi->noflush = (flags & OPEN_NOFLUSH) != 0;
  return true;
}

/* replyCreate(req, entry, fh, flags). */
static napi_value js_reply_create(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(4, REPLY_CREATE);
  struct fuse_entry_param e;
  struct fuse_file_info fi;
  if (!read_entry(env, argv[1], &e) || !read_open(env, argv[2], argv[3], &fi)) return NULL;
  return replied(env, addon, index, fuse_reply_create(slot->req, &e, &fi));
}

/* replyAttr(req, attr, attrTimeout). */
static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3, REPLY_ATTR);
  struct stat st;
  double timeout = 0;
  if (!read_attr(env, argv[1], &st)) return NULL;
  if (napi_get_value_double(env, argv[2], &timeout) != napi_ok || !(timeout >= 0)) {
    THROW_TYPE_ERROR(env, "attrTimeout must be a number of seconds, 0 or more");
    return NULL;
  }
  return replied(env, addon, index, fuse_reply_attr(slot->req, &st, timeout));
}

/* replyReadlink(req, target). */
static napi_value js_reply_readlink(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_READLINK);
  char target[TARGET_LIMIT];
  size_t length;
  if (!get_string(env, argv[1], "target", target, sizeof target, &length)) return NULL;
  return replied(env, addon, index, fuse_reply_readlink(slot->req, target));
}

/* replyOpen(req, fh, flags). */
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(3, REPLY_OPEN);
  struct fuse_file_info fi;
  if (!read_open(env, argv[1], argv[2], &fi)) return NULL;
  return replied(env, addon, index, fuse_reply_open(slot->req, &fi));
}

/* replyWrite(req, count): count at most the bytes the write carried. */
static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_WRITE);
  int64_t count;
  if (!to_integer(env, argv[1], "count", 0, slot->size, &count)) return NULL;
  return replied(env, addon, index, fuse_reply_write(slot->req, (size_t)count));
}

/* Whether `length` bytes may answer the data request in `slot`; throws if not. */
static bool data_fits(napi_env env, const struct slot *slot, size_t length) {
  bool xattr = slot->op == OP_GETXATTR || slot->op == OP_LISTXATTR;
  if (xattr && slot->size == 0) {
    THROW_TYPE_ERROR(env, "a %s request of size 0 asks for the size: answer with replyXattr", ops[slot->op].name);
    return false;
  }
  if (length > slot->size) {
    THROW_RANGE_ERROR(env, "%zu bytes answer a %s request of %u bytes%s", length, ops[slot->op].name, slot->size,
                      xattr ? " (answer ERANGE)" : "");
    return false;
  }
  return true;
}

/* replyBuf(req, data): read data, or an xattr value or name list; at most the size asked for. */
static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_BUF);
  void *data = NULL;
  size_t length = 0;
  if (napi_get_buffer_info(env, argv[1], &data, &length) != napi_ok) {
    THROW_TYPE_ERROR(env, "data must be a Buffer or Uint8Array");
    return NULL;
  }
  if (!data_fits(env, slot, length)) return NULL;
  return replied(env, addon, index, fuse_reply_buf(slot->req, data, length));
}

/*
 * replyBufs(req, chunks): like replyBuf, with the data given as an array of Buffers or
 * Uint8Arrays that go to the kernel one after the other in one write, uncopied.
 */
static napi_value js_reply_bufs(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_BUF);
  bool is_array = false;
  uint32_t count = 0;
  if (napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_array_length(env, argv[1], &count) != napi_ok) {
    THROW_TYPE_ERROR(env, "chunks must be an array of Buffers or Uint8Arrays");
    return NULL;
  }
  if (count > REPLY_CHUNKS_MAX) {
    THROW_RANGE_ERROR(env, "%u chunks answer a %s request, at most %d may", count, ops[slot->op].name, REPLY_CHUNKS_MAX);
    return NULL;
  }
  struct iovec iov[REPLY_CHUNKS_MAX];
  size_t length = 0;
  for (uint32_t i = 0; i < count; i++) {
    napi_value item;
    if (napi_get_element(env, argv[1], i, &item) != napi_ok ||
        napi_get_buffer_info(env, item, &iov[i].iov_base, &iov[i].iov_len) != napi_ok) {
      THROW_TYPE_ERROR(env, "chunk %u must be a Buffer or Uint8Array", i);
      return NULL;
    }
    length += iov[i].iov_len;
  }
  if (!data_fits(env, slot, length)) return NULL;
  return replied(env, addon, index, fuse_reply_iov(slot->req, iov, (int)count));
}

/* replyXattr(req, size): the size of the value or name list, for a request of size 0. */
static napi_value js_reply_xattr(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_XATTR);
  int64_t size;
  if (slot->size != 0) {
    THROW_TYPE_ERROR(env, "a %s request of size %u asks for the data: answer with replyBuf", ops[slot->op].name,
                     slot->size);
    return NULL;
  }
  if (!to_integer(env, argv[1], "size", 0, UINT32_MAX, &size)) return NULL;
  return replied(env, addon, index, fuse_reply_xattr(slot->req, (size_t)size));
}

/*
 * replyReaddir(req, entries): packs {name, offset, ino, mode} entries (readdirplus: with an
 * `entry` each, except . and ..) in order until the size asked for is full. Returns how many the
 * kernel took; for readdirplus each of those with an `entry` counts as one lookup.
 */
static napi_value js_reply_readdir(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_DIRENTS);
  bool is_array = false;
  napi_is_array(env, argv[1], &is_array);
  if (!is_array) {
    THROW_TYPE_ERROR(env, "entries must be an array");
    return NULL;
  }
  uint32_t count = 0;
  napi_get_array_length(env, argv[1], &count);
  bool plus = slot->op == OP_READDIRPLUS;
  size_t size = slot->size;
  char *buf = malloc(size > 0 ? size : 1);
  if (buf == NULL) {
    throw_formatted(env, THROW_ERROR, "ENOMEM", "out of memory");
    return NULL;
  }
  size_t used = 0;
  uint32_t packed = 0;
  for (; packed < count; packed++) {
    napi_value item, value;
    char name[NAME_LIMIT];
    size_t name_length;
    int64_t offset, ino, mode;
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    bool ok = napi_get_element(env, argv[1], packed, &item) == napi_ok && require_object(env, item, "entry") &&
              get_property(env, item, KEY_NAME, &value) &&
              get_string(env, value, "name", name, sizeof name, &name_length) &&
              get_integer(env, item, KEY_OFFSET, true, 0, MAX_SAFE_INTEGER, &offset) &&
              get_integer(env, item, KEY_INO, true, 0, MAX_SAFE_INTEGER, &ino) &&
              get_integer(env, item, KEY_MODE, true, 0, UINT32_MAX, &mode);
    if (ok && plus) {
      ok = get_property(env, item, KEY_ENTRY, &value) &&
           (is_undefined(env, value) || read_entry(env, value, &e));
    }
    if (!ok) {
      free(buf);
      return NULL;
    }
    if (e.ino == 0) {
      e.attr.st_ino = (ino_t)ino;
      e.attr.st_mode = (mode_t)mode;
    }
    size_t room = size - used;
    size_t needed = plus ? fuse_add_direntry_plus(slot->req, buf + used, room, name, &e, offset)
                         : fuse_add_direntry(slot->req, buf + used, room, name, &e.attr, offset);
    if (needed > room) break;
    used += needed;
  }
  int result = fuse_reply_buf(slot->req, buf, used);
  free(buf);
  slot_free(addon, index);
  return result == 0 ? number_value(env, packed) : not_taken(env, REPLY_DIRENTS);
}

/* replyStatfs(req, statfs). */
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  REPLY_PROLOGUE(2, REPLY_STATFS);
  if (!require_object(env, argv[1], "statfs")) return NULL;
  struct statvfs st;
  memset(&st, 0, sizeof st);
  int64_t v;
#define FIELD(key, target)                                                                        \
  do {                                                                                            \
    if (!get_integer(env, argv[1], key, false, 0, MAX_SAFE_INTEGER, &v)) return NULL;     \
    target = v;                                                                                   \
  } while (0)
  FIELD(KEY_BSIZE, st.f_bsize);
  FIELD(KEY_FRSIZE, st.f_frsize);
  FIELD(KEY_BLOCKS, st.f_blocks);
  FIELD(KEY_BFREE, st.f_bfree);
  FIELD(KEY_BAVAIL, st.f_bavail);
  FIELD(KEY_FILES, st.f_files);
  FIELD(KEY_FFREE, st.f_ffree);
  FIELD(KEY_FAVAIL, st.f_favail);
  FIELD(KEY_NAMEMAX, st.f_namemax);
#undef FIELD
  return replied(env, addon, index, fuse_reply_statfs(slot->req, &st));
}

/* requestContext(req): {uid, gid, pid, umask} of the process that made a pending request. */
static napi_value js_request_context(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  struct addon *addon = addon_of(env);
  int64_t token;
  if (argc < 1 || !to_integer(env, argv[0], "req", 0, MAX_SAFE_INTEGER, &token)) return NULL;
  uint32_t index = live_slot(addon, (uint64_t)token);
  if (index == NO_SLOT) {
    throw_formatted(env, THROW_ERROR, "ERR_FUSE_REQUEST_DONE", "request %.0f is not pending", (double)token);
    return NULL;
  }
  const struct fuse_ctx *ctx = fuse_req_ctx(addon->slots[index].req);
  napi_value result;
  CHECK(env, napi_create_object(env, &result));
  set_key(env, result, KEY_UID, number_value(env, ctx->uid));
  set_key(env, result, KEY_GID, number_value(env, ctx->gid));
  set_key(env, result, KEY_PID, number_value(env, ctx->pid));
  set_key(env, result, KEY_UMASK, number_value(env, ctx->umask));
  return result;
}

/* ---- registration ---------------------------------------------------------------------------- */

static void free_addon(napi_env env, void *data, void *hint) {
  (void)hint;
  (void)env;
  struct addon *addon = data;
  free(addon->slots);
  free(addon);
}

napi_status fuse_session_register(napi_env env, napi_value exports) {
  static const struct {
    const char *name;
    napi_callback callback;
  } functions[] = {
    {"mount", js_mount},
    {"close", js_close},
    {"notifyInvalInode", js_notify_inval_inode},
    {"notifyInvalEntry", js_notify_inval_entry},
    {"replyErr", js_reply_err},
    {"replyEntry", js_reply_entry},
    {"replyCreate", js_reply_create},
    {"replyAttr", js_reply_attr},
    {"replyReadlink", js_reply_readlink},
    {"replyOpen", js_reply_open},
    {"replyWrite", js_reply_write},
    {"replyBuf", js_reply_buf},
    {"replyBufs", js_reply_bufs},
    {"replyXattr", js_reply_xattr},
    {"replyReaddir", js_reply_readdir},
    {"replyStatfs", js_reply_statfs},
    {"requestContext", js_request_context},
  };
  napi_status status;
  struct addon *addon = calloc(1, sizeof *addon);
  if (addon == NULL) return napi_generic_failure;
  addon->free_head = NO_SLOT;
  status = napi_set_instance_data(env, addon, free_addon, NULL);
  if (status != napi_ok) {
    free(addon);
    return status;
  }
  for (size_t i = 0; i < sizeof functions / sizeof functions[0]; i++) {
    napi_value fn;
    status = napi_create_function(env, functions[i].name, NAPI_AUTO_LENGTH, functions[i].callback, NULL, &fn);
    if (status == napi_ok) status = napi_set_named_property(env, exports, functions[i].name, fn);
    if (status != napi_ok) return status;
  }
  fuse_set_log_func(on_fuse_log);
  return napi_ok;
}
