/**
 * The FUSE transport on libfuse 3's low-level (inode) API, typed: the binding of the addon's
 * native/src/fuse_session.c, and a Session around it.
 *
 * `Session.mount` mounts and hands each kernel request to one handler of `Operations`, on the JS
 * thread, with a `Request` token first. The handler answers it exactly once with a reply function
 * of this module, at once or later. The addon refuses a second answer, a stale token or a reply
 * of the wrong kind with an exception and leaves the request pending. A handler that throws, or
 * whose promise rejects, before it answered gets EIO for its request, and the error goes to
 * `onError`. Operations left out never enter JS: libfuse answers them (ENOSYS, which the kernel
 * remembers and stops asking; success for open, opendir, release and releasedir).
 *
 * Numbers: inode numbers, file handles, offsets and sizes are JS numbers, integers below 2^53
 * (the kernel only sends back the inode numbers and handles the daemon gave it, and the root's
 * 1); times are whole seconds plus nanoseconds; errors are positive errno values
 * (os.constants.errno). Names are UTF-8 strings.
 *
 * Invalidations run on libuv's thread pool, because the kernel may wait for a request only this
 * thread answers before it completes one. They are safe to start anywhere; never await one before
 * answering a request on the same directory or inode.
 */
import { execFile } from 'node:child_process'
import { constants as osConstants } from 'node:os'
import { nativeExports } from '../../native.js'

declare const requestBrand: unique symbol
/** A pending kernel request: answer it once with a reply function. */
export type Request = number & { readonly [requestBrand]: true }

declare const handleBrand: unique symbol
type SessionHandle = object & { readonly [handleBrand]: true }

/** File attributes, as the kernel caches them. */
export interface Attr {
  ino: number
  mode: number
  nlink: number
  uid: number
  gid: number
  rdev?: number
  size: number
  /** 512-byte blocks allocated. */
  blocks: number
  blksize?: number
  atimeSec: number
  atimeNsec: number
  mtimeSec: number
  mtimeNsec: number
  ctimeSec: number
  ctimeNsec: number
}

/** A name's answer: the inode (node id) it leads to, for how long the kernel may cache it. */
export interface Entry {
  ino: number
  /** Must change if an inode number is reused while the kernel may remember the old inode. */
  generation?: number
  attr: Attr
  /** Seconds the kernel may trust `attr`. */
  attrTimeout: number
  /** Seconds the kernel may trust the name. */
  entryTimeout: number
}

/** What setattr changes: only the fields whose `SetAttr` bit is set are present. */
export interface AttrChanges {
  mode?: number
  uid?: number
  gid?: number
  size?: number
  atimeSec?: number
  atimeNsec?: number
  mtimeSec?: number
  mtimeNsec?: number
  ctimeSec?: number
  ctimeNsec?: number
}

/** The `toSet` bits of setattr (libfuse's FUSE_SET_ATTR_*). With a *_NOW bit, use the daemon's clock. */
export const SetAttr = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8,
  CTIME: 1 << 10
} as const

/** The flags of renameat2(2) that reach rename. */
export const RenameFlags = { NOREPLACE: 1 << 0, EXCHANGE: 1 << 1 } as const

/** The flags of replyOpen and replyCreate (OPEN_* in fuse_session.c). */
export const OpenFlags = {
  /** Reads and writes bypass the page cache. */
  DIRECT_IO: 1,
  /** Keep the page cache this file already has. */
  KEEP_CACHE: 2,
  NONSEEKABLE: 4,
  /** (opendir) The kernel may cache this directory's entries. */
  CACHE_READDIR: 8,
  /** No flush on close. */
  NOFLUSH: 16
} as const

/** One directory entry for replyReaddir; readdirplus also takes `entry` (omit it for . and ..). */
export interface DirEntry {
  name: string
  /** The offset at which the next readdir continues after this entry. */
  offset: number
  ino: number
  /** Only the file type bits (S_IFMT) matter. */
  mode: number
  entry?: Entry
}

export interface Statfs {
  bsize: number
  frsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
  favail: number
  namemax: number
}

/** What the kernel and libfuse agreed at init. */
export interface ConnectionInfo {
  protoMajor: number
  protoMinor: number
  /** libfuse's FUSE_CAP_* bits the kernel offers, and those enabled. */
  capable: number
  want: number
  maxWrite: number
  maxRead: number
  maxReadahead: number
  writebackCache: boolean
}

/** The process behind a request. With the writeback cache, writes come from the kernel (0s). */
export interface RequestContext {
  uid: number
  gid: number
  pid: number
  umask: number
}

type Result = void | Promise<void>

/** The handlers of a session; each answers its request with a reply function. */
export interface Operations {
  init?: (info: ConnectionInfo) => void
  destroy?: () => void
  /** The kernel dropped `nlookup` of the lookups it took on `ino` (no answer). */
  forget?: (ino: number, nlookup: number) => void
  /** The caller of a request still pending was interrupted; answer EINTR if it can stop. */
  interrupt?: (req: Request) => void
  lookup?: (req: Request, parent: number, name: string) => Result
  getattr?: (req: Request, ino: number, fh: number | undefined) => Result
  setattr?: (req: Request, ino: number, changes: AttrChanges, toSet: number, fh: number | undefined) => Result
  readlink?: (req: Request, ino: number) => Result
  mknod?: (req: Request, parent: number, name: string, mode: number, rdev: number) => Result
  mkdir?: (req: Request, parent: number, name: string, mode: number) => Result
  unlink?: (req: Request, parent: number, name: string) => Result
  rmdir?: (req: Request, parent: number, name: string) => Result
  symlink?: (req: Request, parent: number, name: string, target: string) => Result
  rename?: (req: Request, parent: number, name: string, newParent: number, newName: string, flags: number) => Result
  link?: (req: Request, ino: number, newParent: number, newName: string) => Result
  open?: (req: Request, ino: number, flags: number) => Result
  read?: (req: Request, ino: number, size: number, offset: number, fh: number) => Result
  /** `data` is libfuse's buffer, valid only until the handler returns: copy what must outlive it. */
  write?: (req: Request, ino: number, data: Buffer, offset: number, fh: number) => Result
  flush?: (req: Request, ino: number, fh: number) => Result
  release?: (req: Request, ino: number, fh: number, flags: number) => Result
  fsync?: (req: Request, ino: number, datasync: boolean, fh: number) => Result
  opendir?: (req: Request, ino: number, flags: number) => Result
  readdir?: (req: Request, ino: number, size: number, offset: number, fh: number) => Result
  readdirplus?: (req: Request, ino: number, size: number, offset: number, fh: number) => Result
  releasedir?: (req: Request, ino: number, fh: number) => Result
  fsyncdir?: (req: Request, ino: number, datasync: boolean, fh: number) => Result
  statfs?: (req: Request, ino: number) => Result
  setxattr?: (req: Request, ino: number, name: string, value: Buffer, flags: number) => Result
  /** size 0 asks for the value's size (replyXattr), otherwise for the value (replyBuf, or ERANGE). */
  getxattr?: (req: Request, ino: number, name: string, size: number) => Result
  /** Like getxattr, for the NUL-terminated names. */
  listxattr?: (req: Request, ino: number, size: number) => Result
  removexattr?: (req: Request, ino: number, name: string) => Result
  access?: (req: Request, ino: number, mask: number) => Result
  create?: (req: Request, parent: number, name: string, mode: number, flags: number) => Result
  fallocate?: (req: Request, ino: number, mode: number, offset: number, length: number, fh: number) => Result
}

export interface MountOptions {
  /** Shown as the source in /proc/mounts. */
  fsname: string
  /** The type shows as fuse.SUBTYPE. */
  subtype: string
  /** Let users other than the mounter in. */
  allowOther?: boolean
  /** The kernel checks modes and owners itself (default true). */
  defaultPermissions?: boolean
  /** Largest read request in bytes (the max_read mount option); default: as large as max_write. */
  maxRead?: number
  /** The kernel caches writes and sends them in large batches (default false). */
  writebackCache?: boolean
  /** Largest write request in bytes (default and ceiling 1 MiB). */
  maxWrite?: number
  /** How long to wait for a next request before sleeping, 0 to 1000 µs (default 50). */
  spinMicros?: number
  /** Where handler errors go (default: one line on stderr). */
  onError?: (error: unknown, op: string) => void
}

interface Binding {
  mount: (mountpoint: string, options: string[], config: {
    writebackCache: boolean
    maxWrite: number
    maxRead: number
    spinMicros: number
    onError: (error: unknown, op: string) => void
    onGone: (errno: number) => void
  }, handlers: Record<string, unknown>) => SessionHandle
  close: (session: SessionHandle) => void
  notifyInvalInode: (session: SessionHandle, ino: number, offset: number, length: number) => Promise<void>
  notifyInvalEntry: (session: SessionHandle, parent: number, name: string) => Promise<void>
  replyErr: (req: Request, errno: number) => boolean
  replyEntry: (req: Request, entry: Entry) => boolean
  replyCreate: (req: Request, entry: Entry, fh: number, flags: number) => boolean
  replyAttr: (req: Request, attr: Attr, attrTimeout: number) => boolean
  replyReadlink: (req: Request, target: string) => boolean
  replyOpen: (req: Request, fh: number, flags: number) => boolean
  replyWrite: (req: Request, count: number) => boolean
  replyBuf: (req: Request, data: Uint8Array) => boolean
  replyBufs: (req: Request, chunks: Uint8Array[]) => boolean
  replyXattr: (req: Request, size: number) => boolean
  replyReaddir: (req: Request, entries: DirEntry[]) => number
  replyStatfs: (req: Request, statfs: Statfs) => boolean
  requestContext: (req: Request) => RequestContext
}

export const MAX_WRITE = 1024 * 1024
const DEFAULT_SPIN_MICROS = 50
const { EIO } = osConstants.errno
/** The operations that carry no request, so nothing to answer if they fail. */
const WITHOUT_REQUEST = new Set(['init', 'destroy', 'forget', 'interrupt'])

/** Sessions still open; an exiting process detaches their mounts rather than leave them dead. */
const openSessions = new Set<Session>()
let exitHookInstalled = false

let loaded: Binding | undefined
function binding (): Binding {
  loaded ??= nativeExports() as Binding
  return loaded
}

// Each returns true if the kernel took the answer, false if it had given up on the request (it
// was interrupted, or the session ended): after open or create no release will follow then,
// after a lookup no forget.

/** Fails the request with a positive errno. */
export function replyErr (req: Request, errno: number): boolean { return binding().replyErr(req, errno) }
/** Success without data (unlink, rmdir, rename, flush, release, fsync, setxattr, …). */
export function replyOk (req: Request): boolean { return binding().replyErr(req, 0) }
/** lookup, mknod, mkdir, symlink, link: each counts one lookup of entry.ino. */
export function replyEntry (req: Request, entry: Entry): boolean { return binding().replyEntry(req, entry) }
export function replyCreate (req: Request, entry: Entry, fh: number, flags = 0): boolean { return binding().replyCreate(req, entry, fh, flags) }
export function replyAttr (req: Request, attr: Attr, attrTimeout: number): boolean { return binding().replyAttr(req, attr, attrTimeout) }
export function replyReadlink (req: Request, target: string): boolean { return binding().replyReadlink(req, target) }
/** open, opendir: the handle later requests carry, and OpenFlags. */
export function replyOpen (req: Request, fh: number, flags = 0): boolean { return binding().replyOpen(req, fh, flags) }
export function replyWrite (req: Request, count: number): boolean { return binding().replyWrite(req, count) }
/** read, getxattr, listxattr: at most the size asked for; the addon copies nothing. */
export function replyBuf (req: Request, data: Uint8Array): boolean { return binding().replyBuf(req, data) }
/** read: the data as chunks written to the kernel one after the other, without copying them first. */
export function replyBufs (req: Request, chunks: Uint8Array[]): boolean { return binding().replyBufs(req, chunks) }
/** getxattr, listxattr of size 0: the size of the value or of the name list. */
export function replyXattr (req: Request, size: number): boolean { return binding().replyXattr(req, size) }
/** readdir, readdirplus: packs entries until the size asked for is full; returns how many the kernel took. */
export function replyReaddir (req: Request, entries: DirEntry[]): number { return binding().replyReaddir(req, entries) }
export function replyStatfs (req: Request, statfs: Statfs): boolean { return binding().replyStatfs(req, statfs) }
/** The caller of a pending request. */
export function requestContext (req: Request): RequestContext { return binding().requestContext(req) }

function reportToStderr (error: unknown, op: string): void {
  const text = error instanceof Error ? error.stack ?? error.message : String(error)
  process.stderr.write(`fuse: the ${op} handler failed: ${text}\n`)
}

/** A rejected handler promise: EIO for its request if it is still pending, and a report. */
function failed (op: string, req: unknown, error: unknown, report: (error: unknown, op: string) => void): void {
  try {
    binding().replyErr(req as Request, EIO)
  } catch (replyError) {
    if ((replyError as { code?: string }).code !== 'ERR_FUSE_REQUEST_DONE') throw replyError
  }
  report(error, op)
}

type AnyHandler = (a?: unknown, b?: unknown, c?: unknown, d?: unknown, e?: unknown, f?: unknown) => unknown

/** The handlers as the addon calls them: a rejected promise is handled like a throw. */
function guarded (ops: Operations, report: (error: unknown, op: string) => void): Record<string, unknown> {
  const handlers: Record<string, unknown> = {}
  for (const [op, handler] of Object.entries(ops) as Array<[string, AnyHandler | undefined]>) {
    if (handler === undefined) continue
    if (WITHOUT_REQUEST.has(op)) {
      handlers[op] = handler
      continue
    }
    handlers[op] = (a?: unknown, b?: unknown, c?: unknown, d?: unknown, e?: unknown, f?: unknown): void => {
      const result = handler(a, b, c, d, e, f)
      if (result instanceof Promise) result.catch((error: unknown) => { failed(op, a, error, report) })
    }
  }
  return handlers
}

/** The libfuse -o options of a mount. */
function optionList (options: MountOptions): string[] {
  // A comma would split the option and a backslash escape the next character.
  const clean = (text: string): string => text.replace(/[,\\]/g, '_')
  const list = [`fsname=${clean(options.fsname)}`, `subtype=${clean(options.subtype)}`]
  if (options.defaultPermissions ?? true) list.push('default_permissions')
  if (options.allowOther === true) list.push('allow_other')
  return list
}

function fusermount (args: string[]): Promise<string | undefined> {
  return new Promise(resolve => {
    execFile('fusermount', args, (error, _stdout, stderr) => {
      resolve(error === null ? undefined : stderr.trim() || error.message)
    })
  })
}

/** One mount served by this process. */
export class Session {
  /** Settles once the session is over: the kernel ended it (an unmount) or close() ran. */
  readonly ended: Promise<void>
  private handle: SessionHandle | undefined
  private readonly notifications = new Set<Promise<void>>()
  private finish: () => void = () => {}

  private constructor (readonly mountpoint: string) {
    this.ended = new Promise(resolve => { this.finish = resolve })
  }

  /** Mounts `mountpoint` and starts serving it; throws (code ERR_FUSE_MOUNT) if it cannot. */
  static mount (mountpoint: string, ops: Operations, options: MountOptions): Session {
    const session = new Session(mountpoint)
    const report = options.onError ?? reportToStderr
    session.handle = binding().mount(mountpoint, optionList(options), {
      writebackCache: options.writebackCache ?? false,
      maxWrite: Math.min(options.maxWrite ?? MAX_WRITE, MAX_WRITE),
      maxRead: options.maxRead ?? 0,
      spinMicros: options.spinMicros ?? DEFAULT_SPIN_MICROS,
      onError: report,
      onGone: () => { void session.close() }
    }, guarded(ops, report))
    openSessions.add(session)
    if (!exitHookInstalled) {
      exitHookInstalled = true
      process.on('exit', () => {
        for (const open of openSessions) {
          try {
            open.end()
          } catch {
            // Invalidations in flight: the exit closes the device and the kernel fails the mount.
          }
        }
      })
    }
    return session
  }

  /** True until the session is over. */
  get open (): boolean {
    return this.handle !== undefined
  }

  /**
   * Asks the kernel to unmount (fusermount -u) while this process goes on answering, so the
   * kernel can write back what it caches; resolves once the session is over. Rejects, leaving
   * the mount in place, if the kernel refuses (EBUSY while files are open).
   */
  async unmount (): Promise<void> {
    if (this.handle !== undefined) {
      const refusal = await fusermount(['-u', this.mountpoint])
      if (refusal !== undefined) throw new Error(`cannot unmount ${this.mountpoint}: ${refusal}`)
    }
    await this.ended
  }

  /**
   * Ends the session now: the mount is detached, requests the kernel still waits for fail, and
   * requests not yet answered are answered ENOTCONN. Waits for invalidations in flight first.
   */
  async close (): Promise<void> {
    while (this.notifications.size > 0) await Promise.allSettled([...this.notifications])
    this.end()
    await this.ended
  }

  /** Closes the session at once (the addon refuses while invalidations are in flight). */
  private end (): void {
    if (this.handle === undefined) return
    binding().close(this.handle)
    this.handle = undefined
    openSessions.delete(this)
    this.finish()
  }

  /** Drops the kernel's cache of an inode's data from `offset` (all of it for length 0), or only its attributes (offset -1). */
  invalidateInode (ino: number, offset = 0, length = 0): Promise<void> {
    return this.track(handle => binding().notifyInvalInode(handle, ino, offset, length))
  }

  /** Drops the kernel's cached name `name` in directory `parent`, and the directory's attributes. */
  invalidateEntry (parent: number, name: string): Promise<void> {
    return this.track(handle => binding().notifyInvalEntry(handle, parent, name))
  }

  private track (start: (handle: SessionHandle) => Promise<void>): Promise<void> {
    if (this.handle === undefined) return Promise.reject(new Error('the session is over'))
    const notification = start(this.handle)
    this.notifications.add(notification)
    const forget = (): void => { this.notifications.delete(notification) }
    notification.then(forget, forget)
    return notification
  }
}
