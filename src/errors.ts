/**
 * Every errno snapfs returns comes from here, with the reason it is raised. The core throws
 * `FsError`; the FUSE adapter turns its `errno` into the negative number the kernel expects, and
 * the CLIs print `message` as one line.
 */
import { constants } from 'node:os'

const errnos = constants.errno

/** The errno names the core may raise, and the reason for each. */
export const Errno = {
  /** No such file or directory. */
  ENOENT: errnos.ENOENT,
  /** The name exists already (create, mkdir, link, symlink, mknod). */
  EEXIST: errnos.EEXIST,
  /** A path component that must be a directory is not one. */
  ENOTDIR: errnos.ENOTDIR,
  /** A directory where a non-directory is required (unlink, rename of a file over a directory). */
  EISDIR: errnos.EISDIR,
  /** rmdir, or rename over, a directory that still has entries. */
  ENOTEMPTY: errnos.ENOTEMPTY,
  /** Bad argument: renaming a directory into itself, a negative size, an unknown flag. */
  EINVAL: errnos.EINVAL,
  /** A name longer than 255 bytes. */
  ENAMETOOLONG: errnos.ENAMETOOLONG,
  /** The extended attribute does not exist. */
  ENODATA: errnos.ENODATA,
  /** The extended attribute value does not fit the caller's buffer. */
  ERANGE: errnos.ERANGE,
  /** Write to a read-only view (a snapshot). */
  EROFS: errnos.EROFS,
  /** A file of a snapshot that is being deleted, still open or still in the kernel's cache. */
  ESTALE: errnos.ESTALE,
  /** The store's disk is full. */
  ENOSPC: errnos.ENOSPC,
  /** An unknown file handle. */
  EBADF: errnos.EBADF,
  /** Not permitted (hard link to a directory, removing the root). */
  EPERM: errnos.EPERM,
  /** A file would grow past the largest offset the format holds. */
  EFBIG: errnos.EFBIG,
  /** Too many hard links. */
  EMLINK: errnos.EMLINK,
  /** The store could not complete the operation. */
  EIO: errnos.EIO,
  /** The operation is not supported by this file system. */
  EOPNOTSUPP: errnos.EOPNOTSUPP,
  /** The resource is busy (a mount point in use). */
  EBUSY: errnos.EBUSY
} as const

export type ErrnoName = keyof typeof Errno

/**
 * An error with a POSIX errno, raised by the core and mapped by the adapters. It carries no
 * stack trace: ENOENT from a lookup is an ordinary answer, raised thousands of times a second,
 * and capturing a stack each time would cost more than the lookup.
 */
export class FsError extends Error {
  readonly code: ErrnoName
  readonly errno: number

  constructor (code: ErrnoName, message?: string) {
    const limit = Error.stackTraceLimit
    Error.stackTraceLimit = 0
    super(message ?? code)
    Error.stackTraceLimit = limit
    this.code = code
    this.errno = Errno[code]
  }
}

/** Throws `FsError(code)` with a message naming the operation and its subject. */
export function fail (code: ErrnoName, what: string): never {
  throw new FsError(code, `${code}: ${what}`)
}

/** An error the CLIs print as one line and exit with a non-zero status. */
export class UserError extends Error {
  readonly exitCode: number

  constructor (message: string, exitCode = 1) {
    super(message)
    this.exitCode = exitCode
  }
}

/** The negative errno for any thrown value: FsError keeps its own, everything else is EIO. */
export function toNegativeErrno (err: unknown): number {
  if (err instanceof FsError) return -err.errno
  const code = (err as NodeJS.ErrnoException | undefined)?.code
  if (code === 'ENOSPC' || code === 'MDB_MAP_FULL') return -Errno.ENOSPC
  return -Errno.EIO
}
