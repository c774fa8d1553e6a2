/**
 * The storage-less daemon of scripts/null-fs.ts on the project's own FUSE transport (libfuse 3's
 * low-level API, src/fuse/lowlevel/): the ceiling that transport sets, for the benchmark, and the
 * daemon the transport's tests mount.
 *
 * Metadata (directories, files with sizes, modes, owners and times in nanoseconds, symlinks, hard
 * links, extended attributes) lives in memory; file contents are never stored: writes only extend
 * the size and reads return zeros. It mounts with snapfs's options (default_permissions, its own
 * fsname and subtype) plus what this transport adds: the writeback cache and 1 MiB writes. New
 * inodes are numbered from 2^32 + 1 (the root is 1), so 64-bit inode numbers are always in use.
 *
 * For the tests, on the root only: the extended attributes user.null.maxwrite and
 * user.null.writes read the largest write request received and the number of them; a lookup of
 * `.null-throw` throws inside the handler (the transport answers EIO); a lookup of a name starting
 * with `.null-hang` is never answered until its caller is interrupted, then gets EINTR.
 *
 * Usage: node dist/scripts/null-fs-native.js MOUNTPOINT [--allow-other]
 * Prints "ready" once mounted; on SIGTERM or SIGINT it unmounts (detaching if busy) and exits 0,
 * and it exits 0 when the mount goes away under it.
 */
import { constants as fsConstants } from 'node:fs'
import { constants as osConstants } from 'node:os'
import {
  type Attr, type AttrChanges, type DirEntry, type Entry, type Operations, type Request,
  RenameFlags, replyAttr, replyBuf, replyCreate, replyEntry, replyErr, replyOk, replyOpen,
  replyReaddir, replyReadlink, replyStatfs, replyWrite, replyXattr, requestContext, Session, SetAttr
} from '../src/fuse/lowlevel/session.js'

const { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK } = fsConstants
const E = osConstants.errno
const ROOT = 1
const FIRST_INO = 2 ** 32 + 1
const BLOCK_SIZE = 4096
// Every change reaches the kernel through this daemon, and every name of a file shares one
// kernel inode, so cached attributes cannot go stale behind the kernel's back. (snapfs's
// fuse-native mount must use 0: there, each name of a hard link has a kernel inode of its own.)
const ATTR_TIMEOUT = 1
const ENTRY_TIMEOUT = 1
// setxattr's flags, from <sys/xattr.h>.
const XATTR_CREATE = 1
const XATTR_REPLACE = 2
const THROW_NAME = '.null-throw'
const HANG_PREFIX = '.null-hang'
const STATS_PREFIX = 'user.null.'

interface Node {
  ino: number
  mode: number
  uid: number
  gid: number
  rdev: number
  size: number
  atimeSec: number
  atimeNsec: number
  mtimeSec: number
  mtimeNsec: number
  ctimeSec: number
  ctimeNsec: number
  /** Names that lead here (a directory counts its . and its subdirectories' ..). */
  nlink: number
  /** Lookups the kernel holds (forget gives them back): the node lives while either is > 0. */
  lookups: number
  /** Present on directories only. */
  children?: Map<string, Node>
  /** Directories only: the directory holding it, for "..". */
  parent?: Node
  /** Present on symlinks only. */
  target?: string
  xattrs?: Map<string, Buffer>
}

const nodes = new Map<number, Node>()
/** Directory listings taken at opendir, by handle, so readdir offsets stay stable. */
const listings = new Map<number, DirEntry[]>()
/** Lookups of `.null-hang…` names, not answered until interrupted. */
const hanging = new Set<Request>()
const stats = { maxwrite: 0, writes: 0 }
let nextIno = FIRST_INO
let nextHandle = 1
let zeros = Buffer.alloc(0)

function now (): { sec: number, nsec: number } {
  const ms = Date.now()
  return { sec: Math.floor(ms / 1000), nsec: (ms % 1000) * 1e6 }
}

function touch (node: Node, which: { m?: boolean, c?: boolean, a?: boolean }): void {
  const t = now()
  if (which.a === true) { node.atimeSec = t.sec; node.atimeNsec = t.nsec }
  if (which.m === true) { node.mtimeSec = t.sec; node.mtimeNsec = t.nsec }
  if (which.c === true) { node.ctimeSec = t.sec; node.ctimeNsec = t.nsec }
}

function newNode (ino: number, mode: number, uid: number, gid: number): Node {
  const t = now()
  const isDir = (mode & S_IFMT) === S_IFDIR
  const node: Node = {
    ino, mode, uid, gid, rdev: 0, size: 0,
    atimeSec: t.sec, atimeNsec: t.nsec, mtimeSec: t.sec, mtimeNsec: t.nsec, ctimeSec: t.sec, ctimeNsec: t.nsec,
    nlink: isDir ? 2 : 1, lookups: 0
  }
  if (isDir) node.children = new Map()
  nodes.set(ino, node)
  return node
}

const root = newNode(ROOT, S_IFDIR | 0o755, process.getuid?.() ?? 0, process.getgid?.() ?? 0)
root.parent = root

function attrOf (node: Node): Attr {
  const size = node.children !== undefined ? BLOCK_SIZE : node.size
  return {
    ino: node.ino,
    mode: node.mode,
    nlink: node.nlink,
    uid: node.uid,
    gid: node.gid,
    rdev: node.rdev,
    size,
    blocks: Math.ceil(size / 512),
    blksize: BLOCK_SIZE,
    atimeSec: node.atimeSec,
    atimeNsec: node.atimeNsec,
    mtimeSec: node.mtimeSec,
    mtimeNsec: node.mtimeNsec,
    ctimeSec: node.ctimeSec,
    ctimeNsec: node.ctimeNsec
  }
}

function entryOf (node: Node): Entry {
  return { ino: node.ino, attr: attrOf(node), attrTimeout: ATTR_TIMEOUT, entryTimeout: ENTRY_TIMEOUT }
}

/** Answers with the node's entry, which the kernel counts as one lookup. */
function answerEntry (req: Request, node: Node): void {
  if (replyEntry(req, entryOf(node))) node.lookups++
}

/** Drops a node that no name and no kernel lookup holds any more. */
function dropIfUnused (node: Node): void {
  if (node.lookups <= 0 && node.nlink === 0) nodes.delete(node.ino)
}

/** The directory with inode `ino`, or the errno to answer. */
function directory (ino: number): Node | number {
  const node = nodes.get(ino)
  if (node === undefined) return E.ENOENT
  return node.children === undefined ? E.ENOTDIR : node
}

/** Links a new node named `name` into directory `parent` and answers with its entry. */
function addNode (req: Request, parent: number, name: string, mode: number, fill?: (node: Node) => void): Node | undefined {
  const dir = directory(parent)
  if (typeof dir === 'number') {
    replyErr(req, dir)
    return undefined
  }
  if (dir.children?.has(name) === true) {
    replyErr(req, E.EEXIST)
    return undefined
  }
  const caller = requestContext(req)
  const node = newNode(nextIno++, mode, caller.uid, caller.gid)
  fill?.(node)
  dir.children?.set(name, node)
  if (node.children !== undefined) {
    node.parent = dir
    dir.nlink++
  }
  touch(dir, { m: true, c: true })
  return node
}

function isEmptyDir (node: Node): boolean {
  return node.children !== undefined && node.children.size === 0
}

/** Takes `node` (named `name` in `dir`) out of the tree. */
function unlinkNode (dir: Node, name: string, node: Node): void {
  dir.children?.delete(name)
  if (node.children !== undefined) {
    dir.nlink--
    node.nlink = 0
  } else {
    node.nlink--
  }
  touch(dir, { m: true, c: true })
  touch(node, { c: true })
  dropIfUnused(node)
}

function rename (parent: number, name: string, newParent: number, newName: string, flags: number): number {
  const from = directory(parent)
  const to = directory(newParent)
  if (typeof from === 'number') return from
  if (typeof to === 'number') return to
  if ((flags & ~(RenameFlags.NOREPLACE | RenameFlags.EXCHANGE)) !== 0) return E.EINVAL
  // The kernel itself refuses to move a directory into its own subtree.
  const node = from.children?.get(name)
  if (node === undefined) return E.ENOENT
  const replaced = to.children?.get(newName)
  if ((flags & RenameFlags.NOREPLACE) !== 0 && replaced !== undefined) return E.EEXIST
  if ((flags & RenameFlags.EXCHANGE) !== 0) {
    if (replaced === undefined) return E.ENOENT
    from.children?.set(name, replaced)
    to.children?.set(newName, node)
    if (node.children !== undefined) { node.parent = to; to.nlink++; from.nlink-- }
    if (replaced.children !== undefined) { replaced.parent = from; from.nlink++; to.nlink-- }
    touch(from, { m: true, c: true })
    touch(to, { m: true, c: true })
    touch(node, { c: true })
    touch(replaced, { c: true })
    return 0
  }
  if (replaced === node) return 0
  if (replaced !== undefined) {
    if (replaced.children !== undefined) {
      if (node.children === undefined) return E.EISDIR
      if (replaced.children.size > 0) return E.ENOTEMPTY
    } else if (node.children !== undefined) {
      return E.ENOTDIR
    }
    unlinkNode(to, newName, replaced)
  }
  from.children?.delete(name)
  to.children?.set(newName, node)
  if (node.children !== undefined) { node.parent = to; from.nlink--; to.nlink++ }
  touch(from, { m: true, c: true })
  touch(to, { m: true, c: true })
  touch(node, { c: true })
  return 0
}

function applyChanges (node: Node, changes: AttrChanges, toSet: number): number {
  if ((toSet & SetAttr.SIZE) !== 0) {
    if (node.children !== undefined) return E.EISDIR
    node.size = changes.size ?? node.size
    touch(node, { m: true })
  }
  if ((toSet & SetAttr.MODE) !== 0) node.mode = (node.mode & S_IFMT) | ((changes.mode ?? 0) & 0o7777)
  if ((toSet & SetAttr.UID) !== 0) node.uid = changes.uid ?? node.uid
  if ((toSet & SetAttr.GID) !== 0) node.gid = changes.gid ?? node.gid
  if ((toSet & SetAttr.ATIME_NOW) !== 0) touch(node, { a: true })
  else if ((toSet & SetAttr.ATIME) !== 0) { node.atimeSec = changes.atimeSec ?? 0; node.atimeNsec = changes.atimeNsec ?? 0 }
  if ((toSet & SetAttr.MTIME_NOW) !== 0) touch(node, { m: true })
  else if ((toSet & SetAttr.MTIME) !== 0) { node.mtimeSec = changes.mtimeSec ?? 0; node.mtimeNsec = changes.mtimeNsec ?? 0 }
  if ((toSet & SetAttr.CTIME) !== 0) { node.ctimeSec = changes.ctimeSec ?? 0; node.ctimeNsec = changes.ctimeNsec ?? 0 } else touch(node, { c: true })
  return 0
}

/** The value of extended attribute `name`: the stored one, or on the root a counter. */
function xattrValue (node: Node, name: string): Buffer | undefined {
  if (node.ino === ROOT && name.startsWith(STATS_PREFIX)) {
    const key = name.slice(STATS_PREFIX.length)
    if (key === 'maxwrite' || key === 'writes') return Buffer.from(String(stats[key]))
  }
  return node.xattrs?.get(name)
}

/** Answers a getxattr or listxattr with `value`, as the size asked for requires. */
function answerSized (req: Request, size: number, value: Buffer): void {
  if (size === 0) replyXattr(req, value.length)
  else if (value.length > size) replyErr(req, E.ERANGE)
  else replyBuf(req, value)
}

/** Answers `req` with `answer(node)` for an existing inode, or ENOENT. */
function withNode (req: Request, ino: number, answer: (node: Node) => void): void {
  const node = nodes.get(ino)
  if (node === undefined) replyErr(req, E.ENOENT)
  else answer(node)
}

function listing (dir: Node): DirEntry[] {
  const entries: DirEntry[] = [
    { name: '.', offset: 1, ino: dir.ino, mode: dir.mode },
    { name: '..', offset: 2, ino: dir.parent?.ino ?? ROOT, mode: S_IFDIR }
  ]
  for (const [name, child] of dir.children ?? []) {
    entries.push({ name, offset: entries.length + 1, ino: child.ino, mode: child.mode })
  }
  return entries
}

function readdir (req: Request, fh: number, offset: number, plus: boolean): void {
  const entries = listings.get(fh)
  if (entries === undefined) {
    replyErr(req, E.EBADF)
    return
  }
  const rest = entries.slice(offset)
  if (!plus) {
    replyReaddir(req, rest)
    return
  }
  const children = rest.map(entry => {
    const node = entry.name === '.' || entry.name === '..' ? undefined : nodes.get(entry.ino)
    return node === undefined ? entry : { ...entry, entry: entryOf(node) }
  })
  const taken = replyReaddir(req, children)
  for (const entry of children.slice(0, taken)) {
    if (entry.entry !== undefined) {
      const node = nodes.get(entry.ino)
      if (node !== undefined) node.lookups++
    }
  }
}

const ops: Operations = {
  lookup (req, parent, name) {
    if (parent === ROOT && name === THROW_NAME) throw new Error(`a lookup of ${THROW_NAME}`)
    if (parent === ROOT && name.startsWith(HANG_PREFIX)) {
      hanging.add(req)
      return
    }
    const dir = directory(parent)
    if (typeof dir === 'number') {
      replyErr(req, dir)
      return
    }
    const child = dir.children?.get(name)
    if (child === undefined) replyErr(req, E.ENOENT)
    else answerEntry(req, child)
  },
  interrupt (req) {
    if (hanging.delete(req)) replyErr(req, E.EINTR)
  },
  forget (ino, nlookup) {
    const node = nodes.get(ino)
    if (node === undefined) return
    node.lookups -= nlookup
    dropIfUnused(node)
  },
  getattr (req, ino) {
    withNode(req, ino, node => replyAttr(req, attrOf(node), ATTR_TIMEOUT))
  },
  setattr (req, ino, changes, toSet) {
    withNode(req, ino, node => {
      const refusal = applyChanges(node, changes, toSet)
      if (refusal !== 0) replyErr(req, refusal)
      else replyAttr(req, attrOf(node), ATTR_TIMEOUT)
    })
  },
  readlink (req, ino) {
    withNode(req, ino, node => {
      if (node.target === undefined) replyErr(req, E.EINVAL)
      else replyReadlink(req, node.target)
    })
  },
  mknod (req, parent, name, mode, rdev) {
    const node = addNode(req, parent, name, mode, n => { n.rdev = rdev })
    if (node !== undefined) answerEntry(req, node)
  },
  mkdir (req, parent, name, mode) {
    const node = addNode(req, parent, name, S_IFDIR | (mode & 0o7777))
    if (node !== undefined) answerEntry(req, node)
  },
  symlink (req, parent, name, target) {
    const node = addNode(req, parent, name, S_IFLNK | 0o777, n => {
      n.target = target
      n.size = Buffer.byteLength(target)
    })
    if (node !== undefined) answerEntry(req, node)
  },
  unlink (req, parent, name) {
    const dir = directory(parent)
    const node = typeof dir === 'number' ? undefined : dir.children?.get(name)
    if (typeof dir === 'number') replyErr(req, dir)
    else if (node === undefined) replyErr(req, E.ENOENT)
    else if (node.children !== undefined) replyErr(req, E.EISDIR)
    else {
      unlinkNode(dir, name, node)
      replyOk(req)
    }
  },
  rmdir (req, parent, name) {
    const dir = directory(parent)
    const node = typeof dir === 'number' ? undefined : dir.children?.get(name)
    if (typeof dir === 'number') replyErr(req, dir)
    else if (node === undefined) replyErr(req, E.ENOENT)
    else if (node.children === undefined) replyErr(req, E.ENOTDIR)
    else if (!isEmptyDir(node)) replyErr(req, E.ENOTEMPTY)
    else {
      unlinkNode(dir, name, node)
      replyOk(req)
    }
  },
  rename (req, parent, name, newParent, newName, flags) {
    const result = rename(parent, name, newParent, newName, flags)
    if (result === 0) replyOk(req)
    else replyErr(req, result)
  },
  link (req, ino, newParent, newName) {
    const node = nodes.get(ino)
    const dir = directory(newParent)
    if (node === undefined) replyErr(req, E.ENOENT)
    else if (node.children !== undefined) replyErr(req, E.EPERM)
    else if (typeof dir === 'number') replyErr(req, dir)
    else if (dir.children?.has(newName) === true) replyErr(req, E.EEXIST)
    else {
      dir.children?.set(newName, node)
      node.nlink++
      touch(node, { c: true })
      touch(dir, { m: true, c: true })
      answerEntry(req, node)
    }
  },
  open (req, ino) {
    withNode(req, ino, () => replyOpen(req, 0))
  },
  read (req, ino, size, offset) {
    withNode(req, ino, node => {
      const count = Math.max(0, Math.min(size, node.size - offset))
      if (zeros.length < count) zeros = Buffer.alloc(count)
      replyBuf(req, zeros.subarray(0, count))
    })
  },
  write (req, ino, data, offset) {
    withNode(req, ino, node => {
      stats.writes++
      stats.maxwrite = Math.max(stats.maxwrite, data.length)
      if (offset + data.length > node.size) node.size = offset + data.length
      touch(node, { m: true, c: true })
      replyWrite(req, data.length)
    })
  },
  flush (req) {
    replyOk(req)
  },
  release (req) {
    replyOk(req)
  },
  fsync (req) {
    replyOk(req)
  },
  opendir (req, ino) {
    const dir = directory(ino)
    if (typeof dir === 'number') {
      replyErr(req, dir)
      return
    }
    const fh = nextHandle++
    listings.set(fh, listing(dir))
    if (!replyOpen(req, fh)) listings.delete(fh)
  },
  readdir (req, _ino, _size, offset, fh) {
    readdir(req, fh, offset, false)
  },
  readdirplus (req, _ino, _size, offset, fh) {
    readdir(req, fh, offset, true)
  },
  releasedir (req, _ino, fh) {
    listings.delete(fh)
    replyOk(req)
  },
  fsyncdir (req) {
    replyOk(req)
  },
  statfs (req) {
    replyStatfs(req, {
      bsize: BLOCK_SIZE,
      frsize: BLOCK_SIZE,
      blocks: 0x40000000,
      bfree: 0x40000000,
      bavail: 0x40000000,
      files: 0x10000000,
      ffree: 0x10000000,
      favail: 0x10000000,
      namemax: 255
    })
  },
  setxattr (req, ino, name, value, flags) {
    withNode(req, ino, node => {
      const exists = node.xattrs?.has(name) === true
      if ((flags & XATTR_CREATE) !== 0 && exists) replyErr(req, E.EEXIST)
      else if ((flags & XATTR_REPLACE) !== 0 && !exists) replyErr(req, E.ENODATA)
      else {
        node.xattrs ??= new Map()
        node.xattrs.set(name, value)
        touch(node, { c: true })
        replyOk(req)
      }
    })
  },
  getxattr (req, ino, name, size) {
    withNode(req, ino, node => {
      const value = xattrValue(node, name)
      if (value === undefined) replyErr(req, E.ENODATA)
      else answerSized(req, size, value)
    })
  },
  listxattr (req, ino, size) {
    withNode(req, ino, node => {
      answerSized(req, size, Buffer.from([...(node.xattrs?.keys() ?? [])].map(name => name + '\0').join('')))
    })
  },
  removexattr (req, ino, name) {
    withNode(req, ino, node => {
      if (node.xattrs?.delete(name) === true) {
        touch(node, { c: true })
        replyOk(req)
      } else {
        replyErr(req, E.ENODATA)
      }
    })
  },
  create (req, parent, name, mode) {
    const node = addNode(req, parent, name, S_IFREG | (mode & 0o7777))
    if (node !== undefined && replyCreate(req, entryOf(node), 0)) node.lookups++
  },
  fallocate (req, ino, mode, offset, length) {
    withNode(req, ino, node => {
      if (mode !== 0) replyErr(req, E.EOPNOTSUPP)
      else {
        node.size = Math.max(node.size, offset + length)
        touch(node, { c: true })
        replyOk(req)
      }
    })
  }
}

function main (): void {
  const args = process.argv.slice(2)
  const allowOther = args.includes('--allow-other')
  const positional = args.filter(arg => arg !== '--allow-other')
  if (positional.length !== 1) {
    process.stderr.write('usage: null-fs-native MOUNTPOINT [--allow-other]\n')
    process.exit(2)
  }
  let session: Session
  try {
    session = Session.mount(positional[0], ops, { fsname: 'nullfs', subtype: 'nullfs', allowOther, writebackCache: true })
  } catch (err) {
    process.stderr.write(`null-fs-native: mount failed: ${err instanceof Error ? err.message : String(err)}\n`)
    process.exit(1)
  }
  void session.ended.then(() => process.exit(0))
  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    session.unmount().catch(async (err: unknown) => {
      process.stderr.write(`null-fs-native: ${err instanceof Error ? err.message : String(err)}; detaching\n`)
      await session.close()
    })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)
  process.stdout.write('ready\n')
}

main()
