/**
 * A storage-less FUSE daemon on fuse-native: the ceiling the benchmark compares snapfs with.
 *
 * Metadata (directories, files with sizes, modes, owners and times, symlinks, extended
 * attributes) lives in memory; file contents are never stored: writes only extend the size and
 * reads return zeros. It mounts with the same options as snapfs (only the subtype differs) and
 * implements the same operations, so the kernel sends both the same requests (for instance the
 * security.capability lookup before every write, which only a file system with xattrs receives)
 * and the two pay the same kernel and binding costs per request.
 *
 * Usage: node dist/scripts/null-fs.js MOUNTPOINT
 * Prints "ready" once mounted; on SIGTERM or SIGINT it unmounts (lazily if busy) and exits 0.
 */
import { execFile } from 'node:child_process'
import { constants as fsConstants } from 'node:fs'
import { constants as osConstants } from 'node:os'
import { FuseWithOptions, fuseOptionList } from '../src/fuse/mount-options.js'

type DoneCallback = (code: number) => void
type ValueCallback<T> = (code: number, value?: T) => void

const { S_IFMT, S_IFDIR, S_IFREG, S_IFLNK } = fsConstants
const E = osConstants.errno
const BLOCK_SIZE = 4096
// With a timeout fuse-native arms a timer around every operation, as it does for snapfs.
const OP_TIMEOUT_MS = 15_000

interface Node {
  ino: number
  mode: number
  uid: number
  gid: number
  size: number
  atime: number
  mtime: number
  ctime: number
  /** Present on directories only. */
  children?: Map<string, Node>
  /** How many of `children` are directories: a directory's link count is 2 + subdirs. */
  subdirs: number
  /** Present on symlinks only. */
  target?: string
  /** Extended attributes, created on first use. */
  xattrs?: Map<string, Buffer>
}

/** What fuse-native turns into a struct stat (times in milliseconds). */
interface StatFields {
  mode: number
  uid: number
  gid: number
  size: number
  nlink: number
  ino: number
  blksize: number
  blocks: number
  atime: number
  mtime: number
  ctime: number
}

const owner = { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }
let nextIno = 1

function newNode (mode: number): Node {
  const now = Date.now()
  const node: Node = { ino: nextIno++, mode, ...owner, size: 0, atime: now, mtime: now, ctime: now, subdirs: 0 }
  if ((mode & S_IFMT) === S_IFDIR) node.children = new Map()
  return node
}

const root = newNode(S_IFDIR | 0o755)

/** The node at an absolute path, or a negative errno. */
function lookup (path: string): Node | number {
  let node = root
  if (path === '/') return node
  for (const name of path.slice(1).split('/')) {
    if (node.children === undefined) return -E.ENOTDIR
    const child = node.children.get(name)
    if (child === undefined) return -E.ENOENT
    node = child
  }
  return node
}

/** The directory holding a path and the last component's name, or a negative errno. */
function parentOf (path: string): { dir: Node, name: string } | number {
  const slash = path.lastIndexOf('/')
  const dir = lookup(slash === 0 ? '/' : path.slice(0, slash))
  if (typeof dir === 'number') return dir
  if (dir.children === undefined) return -E.ENOTDIR
  return { dir, name: path.slice(slash + 1) }
}

/** 1 if the node is a directory, else 0: what it adds to its parent's subdirs. */
function dirCount (node: Node): number {
  return node.children === undefined ? 0 : 1
}

function statOf (node: Node): StatFields {
  const isDir = node.children !== undefined
  const size = isDir ? BLOCK_SIZE : node.size
  return {
    mode: node.mode,
    uid: node.uid,
    gid: node.gid,
    size,
    nlink: isDir ? 2 + node.subdirs : 1,
    ino: node.ino,
    blksize: BLOCK_SIZE,
    blocks: Math.ceil(size / 512),
    atime: node.atime,
    mtime: node.mtime,
    ctime: node.ctime
  }
}

/** Adds a new node under its parent; fails if the name exists. */
function insert (path: string, node: Node): number {
  const at = parentOf(path)
  if (typeof at === 'number') return at
  if (at.dir.children?.has(at.name) === true) return -E.EEXIST
  at.dir.children?.set(at.name, node)
  at.dir.subdirs += dirCount(node)
  at.dir.mtime = at.dir.ctime = node.ctime
  return 0
}

/** Removes a name from its directory after `check` accepts the node it names. */
function remove (path: string, check: (node: Node) => number): number {
  const at = parentOf(path)
  if (typeof at === 'number') return at
  const node = at.dir.children?.get(at.name)
  if (node === undefined) return -E.ENOENT
  const refusal = check(node)
  if (refusal !== 0) return refusal
  at.dir.children?.delete(at.name)
  at.dir.subdirs -= dirCount(node)
  at.dir.mtime = at.dir.ctime = Date.now()
  return 0
}

function rename (from: string, to: string): number {
  const src = parentOf(from)
  const dst = parentOf(to)
  if (typeof src === 'number') return src
  if (typeof dst === 'number') return dst
  const node = src.dir.children?.get(src.name)
  if (node === undefined) return -E.ENOENT
  if (to.startsWith(from + '/')) return -E.EINVAL
  const replaced = dst.dir.children?.get(dst.name)
  if (replaced === node) return 0
  if (replaced !== undefined) {
    if (replaced.children !== undefined) {
      if (node.children === undefined) return -E.EISDIR
      if (replaced.children.size > 0) return -E.ENOTEMPTY
    } else if (node.children !== undefined) {
      return -E.ENOTDIR
    }
  }
  const now = Date.now()
  src.dir.children?.delete(src.name)
  src.dir.subdirs -= dirCount(node)
  dst.dir.children?.set(dst.name, node)
  dst.dir.subdirs += dirCount(node) - (replaced === undefined ? 0 : dirCount(replaced))
  src.dir.mtime = src.dir.ctime = dst.dir.mtime = dst.dir.ctime = node.ctime = now
  return 0
}

/** Runs `change` on the node at a path and answers with its result. */
function withNode (path: string, cb: DoneCallback, change: (node: Node) => number): void {
  const node = lookup(path)
  cb(typeof node === 'number' ? node : change(node))
}

const ops = {
  getattr (path: string, cb: ValueCallback<StatFields>): void {
    const node = lookup(path)
    if (typeof node === 'number') cb(node)
    else cb(0, statOf(node))
  },
  statfs (_path: string, cb: ValueCallback<object>): void {
    cb(0, {
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
  readdir (path: string, cb: ValueCallback<string[]>): void {
    const node = lookup(path)
    if (typeof node === 'number') cb(node)
    else if (node.children === undefined) cb(-E.ENOTDIR)
    else cb(0, ['.', '..', ...node.children.keys()])
  },
  readlink (path: string, cb: ValueCallback<string>): void {
    const node = lookup(path)
    if (typeof node === 'number') cb(node)
    else if (node.target === undefined) cb(-E.EINVAL)
    else cb(0, node.target)
  },
  create (path: string, mode: number, cb: ValueCallback<number>): void {
    cb(insert(path, newNode(S_IFREG | (mode & 0o7777))), 0)
  },
  open (path: string, _flags: number, cb: ValueCallback<number>): void {
    const node = lookup(path)
    cb(typeof node === 'number' ? node : 0, 0)
  },
  read (path: string, _fd: number, buf: Buffer, len: number, pos: number, cb: ValueCallback<number>): void {
    const node = lookup(path)
    if (typeof node === 'number') {
      cb(node)
      return
    }
    const count = Math.max(0, Math.min(len, node.size - pos))
    buf.fill(0, 0, count)
    cb(count)
  },
  write (path: string, _fd: number, _buf: Buffer, len: number, pos: number, cb: ValueCallback<number>): void {
    const node = lookup(path)
    if (typeof node === 'number') {
      cb(node)
      return
    }
    if (pos + len > node.size) node.size = pos + len
    node.mtime = node.ctime = Date.now()
    cb(len)
  },
  truncate (path: string, size: number, cb: DoneCallback): void {
    withNode(path, cb, node => {
      if (node.children !== undefined) return -E.EISDIR
      node.size = size
      node.mtime = node.ctime = Date.now()
      return 0
    })
  },
  chmod (path: string, mode: number, cb: DoneCallback): void {
    withNode(path, cb, node => {
      node.mode = (node.mode & S_IFMT) | (mode & 0o7777)
      node.ctime = Date.now()
      return 0
    })
  },
  chown (path: string, uid: number, gid: number, cb: DoneCallback): void {
    withNode(path, cb, node => {
      node.uid = uid
      node.gid = gid
      node.ctime = Date.now()
      return 0
    })
  },
  utimens (path: string, atime: number, mtime: number, cb: DoneCallback): void {
    withNode(path, cb, node => {
      node.atime = atime
      node.mtime = mtime
      node.ctime = Date.now()
      return 0
    })
  },
  mkdir (path: string, mode: number, cb: DoneCallback): void {
    cb(insert(path, newNode(S_IFDIR | (mode & 0o7777))))
  },
  symlink (target: string, path: string, cb: DoneCallback): void {
    const node = newNode(S_IFLNK | 0o777)
    node.target = target
    node.size = Buffer.byteLength(target)
    cb(insert(path, node))
  },
  unlink (path: string, cb: DoneCallback): void {
    cb(remove(path, node => node.children === undefined ? 0 : -E.EISDIR))
  },
  rmdir (path: string, cb: DoneCallback): void {
    cb(remove(path, node => {
      if (node.children === undefined) return -E.ENOTDIR
      return node.children.size === 0 ? 0 : -E.ENOTEMPTY
    }))
  },
  rename (from: string, to: string, cb: DoneCallback): void {
    cb(rename(from, to))
  },
  getxattr (path: string, name: string, _position: number, cb: ValueCallback<Buffer>): void {
    const node = lookup(path)
    if (typeof node === 'number') cb(node)
    else {
      const value = node.xattrs?.get(name)
      if (value === undefined) cb(-E.ENODATA)
      else cb(0, value)
    }
  },
  listxattr (path: string, cb: ValueCallback<string[]>): void {
    const node = lookup(path)
    if (typeof node === 'number') cb(node)
    else cb(0, [...(node.xattrs?.keys() ?? [])])
  },
  setxattr (path: string, name: string, value: Buffer, _position: number, _flags: number, cb: DoneCallback): void {
    withNode(path, cb, node => {
      node.xattrs ??= new Map()
      node.xattrs.set(name, Buffer.from(value))
      return 0
    })
  },
  removexattr (path: string, name: string, cb: DoneCallback): void {
    withNode(path, cb, node => node.xattrs?.delete(name) === true ? 0 : -E.ENODATA)
  },
  flush (_path: string, _fd: number, cb: DoneCallback): void {
    cb(0)
  },
  fsync (_path: string, _datasync: number, _fd: number, cb: DoneCallback): void {
    cb(0)
  },
  release (_path: string, _fd: number, cb: DoneCallback): void {
    cb(0)
  }
}

function fusermount (args: string[]): Promise<boolean> {
  return new Promise(resolve => {
    execFile('fusermount', args, err => { resolve(err === null) })
  })
}

function main (): void {
  const mountpoint = process.argv[2]
  if (mountpoint === undefined || process.argv.length > 3) {
    process.stderr.write('usage: null-fs MOUNTPOINT\n')
    process.exit(2)
  }
  const options = fuseOptionList({ fsname: 'nullfs', allowOther: false })
    .map(option => option.startsWith('subtype=') ? 'subtype=nullfs' : option)
  const fuse = new FuseWithOptions(mountpoint, ops, options, OP_TIMEOUT_MS)

  let stopping = false
  const stop = (): void => {
    if (stopping) return
    stopping = true
    // Never a synchronous call here: the kernel may ask this very process while unmounting.
    fusermount(['-u', fuse.mnt])
      .then(async done => done || await fusermount(['-uz', fuse.mnt]))
      .then(done => {
        if (!done) process.stderr.write(`null-fs: could not unmount ${fuse.mnt}\n`)
        process.exit(0)
      })
  }
  process.on('SIGTERM', stop)
  process.on('SIGINT', stop)

  fuse.mount(err => {
    if (err !== null) {
      process.stderr.write(`null-fs: mount failed: ${err.message}\n`)
      process.exit(1)
    }
    process.stdout.write('ready\n')
  })
}

main()
