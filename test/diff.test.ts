/**
 * `snapctl diff` on real mounts: between two snapshots and from a snapshot to the live volume it
 * lists exactly what changed, as `zfs diff` does: + for files, directories, symlinks and fifos
 * added, - for files and directory trees removed, M for a file whose content, mode, owner, times
 * or xattrs changed and for a directory whose entries changed, R for a file or directory renamed
 * (in place or into another directory); a file only read (its access time moved) is not listed.
 * The human lines carry the mount's path, --json the fields the spec defines, sorted by path, and
 * the package API returns the same. A snapshot not older than the other side, or unknown, is
 * refused with one line. In a volume of 5,000 files a one-file change lists that file alone (and
 * its directory when an entry was added).
 */
import t from 'tap'
import { chmod, chown, mkdir, readFile, rename, rm, stat, symlink, unlink, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { diffSnapshots } from '../dist/src/index.js'
import { ctl, ctlJson, ctlOk, type DiffEntry, failsWithOneLine, umountAndCheck } from './helpers/ctl.js'
import { mountFresh, type Mounted } from './helpers/mount.js'
import { mkfifo, setTimes, setXattr } from './helpers/tree.js'

t.setTimeout(3 * 60_000)

/** The lines `snapctl diff` prints for these entries on mount `m`. */
function humanLines (m: Mounted, entries: DiffEntry[]): string {
  return entries.map(e => e.change === 'R'
    ? `R\t${m.mnt}${e.path} -> ${m.mnt}${e.to ?? ''}\n`
    : `${e.change}\t${m.mnt}${e.path}\n`).join('')
}

const byPath = (a: DiffEntry, b: DiffEntry): number => a.path < b.path ? -1 : a.path > b.path ? 1 : 0

t.test('diff lists + - M R for files and directories, between snapshots and to live; reads are not changes', { timeout: 90_000 }, async t => {
  const m = await mountFresh(t)
  const at = (...parts: string[]): string => join(m.mnt, ...parts)
  for (const name of ['gone.txt', 'ren-src.txt', 'content.txt', 'mode.txt', 'owner.txt', 'times.txt', 'xattr.txt', 'untouched.txt']) {
    await writeFile(at(name), `${name}\n`)
  }
  await mkdir(at('olddir'))
  await writeFile(at('olddir', 'inner'), 'inner\n')
  await mkdir(at('dir1'))
  await writeFile(at('dir1', 'x'), 'x\n')
  await mkdir(at('dir2'))
  await writeFile(at('read.txt'), 'only read\n')
  // An access time older than the modification time: the next read moves it (relatime).
  await setTimes(at('read.txt'), 1_600_000_000_000)
  await ctlOk(t, m, ['create', 's1'])

  await unlink(at('gone.txt'))
  await rm(at('olddir'), { recursive: true })
  await rename(at('ren-src.txt'), at('dir2', 'renamed.txt'))
  await rename(at('dir1'), at('dir1-moved'))
  await writeFile(at('content.txt'), 'new content\n')
  await chmod(at('mode.txt'), 0o600)
  await chown(at('owner.txt'), 1234, 5678)
  await utimes(at('times.txt'), new Date(1_500_000_000_000), new Date(1_500_000_000_000))
  await setXattr(t, at('xattr.txt'), 'user.added', 'yes')
  await writeFile(at('new.txt'), 'new\n')
  await mkdir(at('newdir'))
  await writeFile(at('newdir', 'n'), 'n\n')
  await symlink('new.txt', at('sym'))
  await mkfifo(t, at('fifo'), 0o644)
  t.equal(await readFile(at('read.txt'), 'utf8'), 'only read\n', 'read.txt is read')
  t.equal(await readFile(at('untouched.txt'), 'utf8'), 'untouched.txt\n', 'untouched.txt is read')
  await ctlOk(t, m, ['create', 's2'])
  const readBefore = await stat(join(m.mnt, '.snapshots', 's1', 'read.txt'))
  const readAfter = await stat(join(m.mnt, '.snapshots', 's2', 'read.txt'))
  t.ok(readAfter.atimeMs > readBefore.atimeMs, 'the read moved read.txt\'s access time from s1 to s2')

  const expected: DiffEntry[] = [
    { change: 'M', path: '/', type: 'directory' },
    { change: 'M', path: '/content.txt', type: 'file' },
    { change: 'R', path: '/dir1', to: '/dir1-moved', type: 'directory' },
    { change: 'M', path: '/dir2', type: 'directory' },
    { change: '+', path: '/fifo', type: 'other' },
    { change: '-', path: '/gone.txt', type: 'file' },
    { change: 'M', path: '/mode.txt', type: 'file' },
    { change: '+', path: '/new.txt', type: 'file' },
    { change: '+', path: '/newdir', type: 'directory' },
    { change: '+', path: '/newdir/n', type: 'file' },
    { change: '-', path: '/olddir', type: 'directory' },
    { change: '-', path: '/olddir/inner', type: 'file' },
    { change: 'M', path: '/owner.txt', type: 'file' },
    { change: 'R', path: '/ren-src.txt', to: '/dir2/renamed.txt', type: 'file' },
    { change: '+', path: '/sym', type: 'symlink' },
    { change: 'M', path: '/times.txt', type: 'file' },
    { change: 'M', path: '/xattr.txt', type: 'file' }
  ]
  const between = await ctlJson<DiffEntry[]>(t, m, ['diff', 's1', 's2'])
  t.strictSame(between, expected, 'diff s1 s2 --json: every change, each with its kind and type, nothing else')
  t.strictSame([...between].sort(byPath), between, 'sorted by path')
  for (const e of between) {
    t.strictSame(Object.keys(e).sort(), e.change === 'R' ? ['change', 'path', 'to', 'type'] : ['change', 'path', 'type'],
      `${e.path}: the fields the spec defines, "to" for R only`)
  }
  t.equal(await ctlOk(t, m, ['diff', 's1', 's2']), humanLines(m, expected), 'the human lines: change, tab, path in the mount')
  t.ok((await ctlOk(t, m, ['diff', 's1', 's2'])).includes(`R\t${m.mnt}/ren-src.txt -> ${m.mnt}/dir2/renamed.txt\n`), 'a rename reads old -> new')
  t.strictSame(await diffSnapshots(m.mnt, 's1', 's2'), expected, 'diffSnapshots returns the same')
  t.strictSame(await ctlJson(t, m, ['diff', 's1']), expected, 'diff s1 to live, with nothing changed since s2: the same')

  await writeFile(at('new.txt'), 'changed after s2\n')
  await unlink(at('dir2', 'renamed.txt'))
  await mkdir(at('late'))
  t.equal(await readFile(at('read.txt'), 'utf8'), 'only read\n', 'read.txt is read again')
  t.equal(await readFile(at('times.txt'), 'utf8'), 'times.txt\n', 'times.txt is read')
  const toLive: DiffEntry[] = [
    { change: 'M', path: '/', type: 'directory' },
    { change: 'M', path: '/dir2', type: 'directory' },
    { change: '-', path: '/dir2/renamed.txt', type: 'file' },
    { change: '+', path: '/late', type: 'directory' },
    { change: 'M', path: '/new.txt', type: 'file' }
  ]
  t.strictSame(await ctlJson(t, m, ['diff', 's2']), toLive, 'diff s2 to live: what changed since, no file only read')
  t.equal(await ctlOk(t, m, ['diff', 's2']), humanLines(m, toLive), 'as human lines')
  t.strictSame(await diffSnapshots(m.mnt, 's2'), toLive, 'diffSnapshots without a second name diffs to live')

  failsWithOneLine(t, await ctl(m, ['diff', 's2', 's1']), /older/i, 'diff with A newer than B')
  failsWithOneLine(t, await ctl(m, ['diff', 's1', 's1']), /older/i, 'diff of a snapshot with itself')
  failsWithOneLine(t, await ctl(m, ['diff', 'nosuch']), /no snapshot/i, 'diff from an unknown snapshot')
  failsWithOneLine(t, await ctl(m, ['diff', 's1', 'nosuch']), /no snapshot/i, 'diff to an unknown snapshot')
  await umountAndCheck(t, m)
})

t.test('in a volume of 5,000 files a one-file change lists that file alone', { timeout: 150_000 }, async t => {
  const m = await mountFresh(t)
  for (let d = 0; d < 100; d++) {
    const dir = join(m.mnt, `d${d}`)
    await mkdir(dir)
    await Promise.all(Array.from({ length: 50 }, async (_, i) => await writeFile(join(dir, `f${i}`), `file ${d}/${i}\n`)))
  }
  t.equal((await readFile(join(m.mnt, 'd99', 'f49'), 'utf8')), 'file 99/49\n', 'the 5,000 files are there')
  await ctlOk(t, m, ['create', 's1'])

  await writeFile(join(m.mnt, 'd42', 'f23'), 'changed\n')
  const modified: DiffEntry[] = [{ change: 'M', path: '/d42/f23', type: 'file' }]
  t.strictSame(await ctlJson(t, m, ['diff', 's1']), modified, 'a rewritten file: that file, modified')
  t.equal(await ctlOk(t, m, ['diff', 's1']), `M\t${m.mnt}/d42/f23\n`, 'one line')
  await ctlOk(t, m, ['create', 's2'])
  t.strictSame(await ctlJson(t, m, ['diff', 's1', 's2']), modified, 'the same between the two snapshots')

  await writeFile(join(m.mnt, 'd77', 'added'), 'added\n')
  t.strictSame(await ctlJson(t, m, ['diff', 's2']), [
    { change: 'M', path: '/d77', type: 'directory' },
    { change: '+', path: '/d77/added', type: 'file' }
  ], 'an added file: that file, and its directory modified')
  await umountAndCheck(t, m)
})
