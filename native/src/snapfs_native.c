/*
 * snapfs_native: the system calls snapfs needs and Node does not offer.
 *
 *   syncfs(fd: number): void
 *     Flushes every dirty buffer the kernel holds for the file system that
 *     contains fd (syncfs(2)); snapfs calls it before an unmount or a
 *     snapshot. It blocks the calling thread until the kernel is done, so it
 *     must never be called on a mount whose daemon is that same thread.
 *     On failure it throws an Error shaped like Node's own fs errors:
 *     code ('EBADF', ...), errno (negative, as Node reports it), syscall.
 *
 *   releaseMapping(start: bigint, length: bigint): void
 *     madvise(MADV_DONTNEED) on a page-aligned range of a shared, read-only
 *     file mapping of this process (LMDB's map of the store file): the pages
 *     stay in the kernel's page cache, only this process's mapping of them
 *     goes, so the store file stops counting against the daemon's resident
 *     memory. The next access faults the same bytes back in.
 *
 *   mount, close, notifyInvalInode, notifyInvalEntry, reply*, requestContext
 *     The FUSE transport on libfuse 3's low-level API: see fuse_session.c.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <sys/mman.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <node_api.h>

#include "fuse_session.h"

/* Returns NULL after throwing if a N-API call failed; used for every call. */
#define NAPI_CHECK(env, call)                                                  \
  do {                                                                         \
    if ((call) != napi_ok) {                                                   \
      throw_last_napi_error(env);                                              \
      return NULL;                                                             \
    }                                                                          \
  } while (0)

/* Rethrows a failed N-API call as a JS Error unless one is already pending. */
static void throw_last_napi_error(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (pending) return;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  napi_throw_error(env, NULL,
                   info != NULL && info->error_message != NULL
                       ? info->error_message
                       : "snapfs_native: N-API call failed");
}

/* The name Node gives an errno; covers what syncfs(2) can return. */
static const char *errno_name(int err) {
  switch (err) {
    case EBADF: return "EBADF";
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EINTR: return "EINTR";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case ENOMEM: return "ENOMEM";
    case EAGAIN: return "EAGAIN";
    default: return "UNKNOWN";
  }
}

/* Throws `CODE: description, syscall` with code, errno and syscall set. */
static void throw_errno(napi_env env, int err, const char *syscall) {
  char message[256];
  snprintf(message, sizeof message, "%s: %s, %s", errno_name(err),
           strerror(err), syscall);

  napi_value error, code, msg, errno_value, syscall_value;
  if (napi_create_string_utf8(env, errno_name(err), NAPI_AUTO_LENGTH, &code) != napi_ok ||
      napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg) != napi_ok ||
      napi_create_error(env, code, msg, &error) != napi_ok ||
      napi_create_int32(env, -err, &errno_value) != napi_ok ||
      napi_set_named_property(env, error, "errno", errno_value) != napi_ok ||
      napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &syscall_value) != napi_ok ||
      napi_set_named_property(env, error, "syscall", syscall_value) != napi_ok ||
      napi_throw(env, error) != napi_ok) {
    throw_last_napi_error(env);
  }
}

/* syncfs(fd): validates fd as a non-negative integer, then calls syncfs(2). */
static napi_value js_syncfs(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));

  napi_valuetype type = napi_undefined;
  if (argc >= 1) NAPI_CHECK(env, napi_typeof(env, argv[0], &type));
  if (type != napi_number) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE",
                          "syncfs: fd must be a number");
    return NULL;
  }

  double value = 0;
  NAPI_CHECK(env, napi_get_value_double(env, argv[0], &value));
  if (!(value >= 0 && value <= INT_MAX) || value != (double)(int)value) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE",
                           "syncfs: fd must be an integer from 0 to 2147483647");
    return NULL;
  }

  if (syncfs((int)value) != 0) throw_errno(env, errno, "syncfs");
  return NULL;
}

/* Reads argument i as an unsigned 64-bit bigint; throws and returns 0 otherwise. */
static int get_u64(napi_env env, napi_value value, const char *what, uint64_t *out) {
  napi_valuetype type = napi_undefined;
  bool lossless = false;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_bigint ||
      napi_get_value_bigint_uint64(env, value, out, &lossless) != napi_ok || !lossless) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", what);
    return 0;
  }
  return 1;
}

/* releaseMapping(start, length): madvise(MADV_DONTNEED) on a page-aligned range. */
static napi_value js_release_mapping(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  NAPI_CHECK(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  if (argc < 2) {
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", "releaseMapping: start and length are required");
    return NULL;
  }
  uint64_t start = 0, length = 0;
  if (!get_u64(env, argv[0], "releaseMapping: start must be a bigint", &start)) return NULL;
  if (!get_u64(env, argv[1], "releaseMapping: length must be a bigint", &length)) return NULL;
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  if (start % page != 0 || length % page != 0 || length == 0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "releaseMapping: start and length must be whole pages");
    return NULL;
  }
  if (madvise((void *)(uintptr_t)start, (size_t)length, MADV_DONTNEED) != 0) {
    throw_errno(env, errno, "madvise");
  }
  return NULL;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  NAPI_CHECK(env, napi_create_function(env, "syncfs", NAPI_AUTO_LENGTH,
                                       js_syncfs, NULL, &fn));
  NAPI_CHECK(env, napi_set_named_property(env, exports, "syncfs", fn));
  NAPI_CHECK(env, napi_create_function(env, "releaseMapping", NAPI_AUTO_LENGTH,
                                       js_release_mapping, NULL, &fn));
  NAPI_CHECK(env, napi_set_named_property(env, exports, "releaseMapping", fn));
  NAPI_CHECK(env, fuse_session_register(env, exports));
  return exports;
}
