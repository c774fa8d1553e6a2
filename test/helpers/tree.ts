/**
 * Captures of a directory tree, for tests that compare a live tree with a snapshot of it: every
 * byte (as a SHA-256), listing, link target, xattr and attribute, and which paths are hard links
 * of one inode. Two trees are the same when their captures are deep-equal. Also the small setters
 * (times, xattrs) those tests build their trees with.
 */
import { lstat, readdir, readFile, readlink, utimes } from 'node:fs/promises'
import { join } from 'node:path'
import type { Test } from 'tap'
import { run, sha } from './mount.js'

/** What a file system object looks like from outside: every attribute a snapshot must keep. */
export interface Node {
  mode: number
  uid: number
  gid: number
  size: number
  nlink: number
  atimeMs: number
  mtimeMs: number
  ctimeMs: number
  /** The first path (in sorted order) with the same st_ino: hard links name the same one. */
  inode: string
  sha?: string
  target?: string
  entries?: string[]
  xattrs: Record<string, string>
}

/** Path (relative to the captured root, '.' for the root) → what it looks like. */
export type Tree = Record<string, Node>

/** The user.* extended attributes of everything under `root`, hex-encoded, by relative path. */
export async function xattrsUnder (root: string): Promise<Record<string, Record<string, string>>> {
  const r = await run('getfattr', ['-R', '-h', '-d', '-m', '^user\\.', '-e', 'hex', '.'], { cwd: root })
  const found: Record<string, Record<string, string>> = {}
  let current: Record<string, string> | undefined
  for (const line of r.stdout.split('\n')) {
    if (line.startsWith('# file: ')) {
      const path = line.slice('# file: '.length).replace(/^\.\//, '')
      current = found[path] = {}
    } else if (line !== '' && current !== undefined) {
      const eq = line.indexOf('=')
      if (eq < 0) current[line] = ''
      else current[line.slice(0, eq)] = line.slice(eq + 1)
    }
  }
  return found
}

/**
 * Everything under `root`: contents (sha-256), listings, link targets and xattrs first, then the
 * attributes with lstat, so the access times compared are those left after the reads.
 */
export async function capture (root: string): Promise<Tree> {
  const read: Record<string, Pick<Node, 'sha' | 'target' | 'entries'>> = {}
  const walk = async (rel: string): Promise<void> => {
    const abs = join(root, rel)
    const st = await lstat(abs)
    if (st.isDirectory()) {
      const names = (await readdir(abs)).sort()
      read[rel] = { entries: names }
      for (const name of names) await walk(rel === '.' ? name : `${rel}/${name}`)
    } else if (st.isFile()) {
      read[rel] = { sha: sha(await readFile(abs)) }
    } else if (st.isSymbolicLink()) {
      read[rel] = { target: await readlink(abs) }
    } else {
      read[rel] = {}
    }
  }
  await walk('.')
  const xattrs = await xattrsUnder(root)
  const tree: Tree = {}
  const firstWithIno = new Map<bigint, string>()
  for (const rel of Object.keys(read).sort()) {
    const st = await lstat(join(root, rel), { bigint: true })
    const inode = firstWithIno.get(st.ino) ?? rel
    firstWithIno.set(st.ino, inode)
    tree[rel] = {
      mode: Number(st.mode),
      uid: Number(st.uid),
      gid: Number(st.gid),
      size: Number(st.size),
      nlink: Number(st.nlink),
      atimeMs: Number(st.atimeNs / 1_000_000n),
      mtimeMs: Number(st.mtimeNs / 1_000_000n),
      ctimeMs: Number(st.ctimeNs / 1_000_000n),
      inode,
      ...read[rel],
      xattrs: xattrs[rel] ?? {}
    }
  }
  return tree
}

/**
 * A capture taken twice: the first reads move the access times a read may move (relatime), the
 * second records the settled state, which further reads leave as it is.
 */
export async function settledCapture (root: string): Promise<Tree> {
  await capture(root)
  return await capture(root)
}

/** The same tree without access times: for states whose last reads may not have been kept. */
export function withoutAtime (tree: Tree): Record<string, Omit<Node, 'atimeMs'>> {
  return Object.fromEntries(Object.entries(tree).map(([path, { atimeMs: _atime, ...rest }]) => [path, rest]))
}

/** Sets both times (the binding carries atime in both): fractions that survive seconds as floats. */
export async function setTimes (path: string, ms: number): Promise<void> {
  await utimes(path, new Date(ms), new Date(ms))
}

/** setfattr NAME [VALUE] on `path`, which must succeed. */
export async function setXattr (t: Test, path: string, name: string, value?: string): Promise<void> {
  const r = await run('setfattr', ['-n', name, ...(value === undefined ? [] : ['-v', value]), path])
  t.equal(r.code, 0, `setfattr ${name} ${r.stderr}`)
}

/** setfattr -x NAME on `path`, which must succeed. */
export async function removeXattr (t: Test, path: string, name: string): Promise<void> {
  const r = await run('setfattr', ['-x', name, path])
  t.equal(r.code, 0, `setfattr -x ${name} ${r.stderr}`)
}

/** mkfifo -m MODE `path`, which must succeed. */
export async function mkfifo (t: Test, path: string, mode: number): Promise<void> {
  const r = await run('mkfifo', ['-m', mode.toString(8), path])
  t.equal(r.code, 0, `mkfifo ${path} ${r.stderr}`)
}
