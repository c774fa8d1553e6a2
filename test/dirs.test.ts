/**
 * Directories on a snapfs mount follow POSIX: mkdir and rmdir work and fail with the right errno
 * (ENOTEMPTY, ENOTDIR, EEXIST), a directory of 10,000 entries lists exactly those names, names
 * of up to 255 bytes are accepted and longer ones refused with ENAMETOOLONG, and a directory's
 * link count is 2 plus its subdirectories.
 */
import t from 'tap'
import { mkdir, readdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { errnoOf, mountFresh, type Mounted } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

let m: Mounted
t.before(async () => { m = await mountFresh(t) })

t.test('mkdir makes a directory and rmdir removes it', async t => {
  const dir = join(m.mnt, 'plain')
  await mkdir(dir)
  t.ok((await stat(dir)).isDirectory(), 'stat says directory')
  t.same(await readdir(dir), [], 'a new directory is empty')
  await rmdir(dir)
  t.equal(await errnoOf(() => stat(dir)), 'ENOENT', 'gone after rmdir')
  t.notOk((await readdir(m.mnt)).includes('plain'), 'no longer listed')
})

t.test('rmdir of a non-empty directory fails with ENOTEMPTY and keeps it', async t => {
  const withFile = join(m.mnt, 'full-file')
  await mkdir(withFile)
  await writeFile(join(withFile, 'f'), 'x')
  t.equal(await errnoOf(() => rmdir(withFile)), 'ENOTEMPTY', 'holding a file')
  const withDir = join(m.mnt, 'full-dir')
  await mkdir(join(withDir, 'sub'), { recursive: true })
  t.equal(await errnoOf(() => rmdir(withDir)), 'ENOTEMPTY', 'holding a subdirectory')
  t.same(await readdir(withFile), ['f'], 'its content is intact')
})

t.test('rmdir of a file fails with ENOTDIR', async t => {
  const file = join(m.mnt, 'not-a-dir')
  await writeFile(file, 'x')
  t.equal(await errnoOf(() => rmdir(file)), 'ENOTDIR', 'rmdir of a file')
  t.ok((await stat(file)).isFile(), 'the file is still there')
})

t.test('mkdir of an existing name fails with EEXIST', async t => {
  const dir = join(m.mnt, 'twice')
  await mkdir(dir)
  t.equal(await errnoOf(() => mkdir(dir)), 'EEXIST', 'over a directory')
  const file = join(m.mnt, 'file-there')
  await writeFile(file, 'x')
  t.equal(await errnoOf(() => mkdir(file)), 'EEXIST', 'over a file')
  t.ok((await stat(file)).isFile(), 'the file is untouched')
})

t.test('readdir of 10,000 entries returns exactly the names created', async t => {
  const dir = join(m.mnt, 'many')
  await mkdir(dir)
  const names = Array.from({ length: 10_000 }, (_, i) => `entry-${i}-${(i * 7919 % 10_007).toString(36)}`)
  // A few creators at once, as `cp -r` or `tar` would.
  const lanes = 8
  await Promise.all(Array.from({ length: lanes }, async (_, lane) => {
    for (let i = lane; i < names.length; i += lanes) await writeFile(join(dir, names[i]), '')
  }))
  const listed = await readdir(dir)
  t.equal(listed.length, names.length, 'as many entries as files')
  t.same([...listed].sort(), [...names].sort(), 'the same names, no more, no less')
})

t.test('names of 255 bytes are accepted, 256 bytes refused with ENAMETOOLONG', async t => {
  const files = join(m.mnt, 'names', 'files')
  const dirs = join(m.mnt, 'names', 'dirs')
  await mkdir(files, { recursive: true })
  await mkdir(dirs)
  const ascii255 = 'a'.repeat(255)
  // 127 two-byte characters and one one-byte: 255 bytes but only 128 characters.
  const utf255 = 'é'.repeat(127) + 'z'
  t.equal(Buffer.byteLength(utf255), 255, 'the multibyte name is 255 bytes')
  for (const name of [ascii255, utf255]) {
    const label = name === ascii255 ? 'ASCII' : 'UTF-8'
    await writeFile(join(files, name), label)
    await mkdir(join(dirs, name))
    t.equal(await readFile(join(files, name), 'utf8'), label, `a 255-byte ${label} file name reads back`)
    t.ok((await stat(join(dirs, name))).isDirectory(), `a 255-byte ${label} directory name`)
  }
  t.same((await readdir(files)).sort(), [ascii255, utf255].sort(), 'both long file names listed intact')
  t.same((await readdir(dirs)).sort(), [ascii255, utf255].sort(), 'both long directory names listed intact')
  const ascii256 = 'b'.repeat(256)
  // 128 characters, 256 bytes: a limit counted in characters would wrongly let it through.
  const utf256 = 'é'.repeat(128)
  for (const name of [ascii256, utf256]) {
    const label = name === ascii256 ? 'ASCII' : 'UTF-8'
    t.equal(await errnoOf(() => writeFile(join(files, name), 'x')), 'ENAMETOOLONG', `creating a 256-byte ${label} file name`)
    t.equal(await errnoOf(() => mkdir(join(dirs, name))), 'ENAMETOOLONG', `creating a 256-byte ${label} directory name`)
    t.equal(await errnoOf(() => stat(join(files, name))), 'ENAMETOOLONG', `looking up a 256-byte ${label} name`)
  }
  t.equal((await readdir(files)).length, 2, 'nothing was created by the refused names')
})

t.test('a directory has 2 links plus one per subdirectory', async t => {
  const dir = join(m.mnt, 'links')
  await mkdir(dir)
  t.equal((await stat(dir)).nlink, 2, 'empty: 2')
  for (const sub of ['a', 'b', 'c']) await mkdir(join(dir, sub))
  t.equal((await stat(dir)).nlink, 5, 'three subdirectories: 5')
  await writeFile(join(dir, 'file'), 'x')
  t.equal((await stat(dir)).nlink, 5, 'a file adds no link')
  t.equal((await stat(join(dir, 'a'))).nlink, 2, 'a leaf subdirectory: 2')
  await rmdir(join(dir, 'b'))
  t.equal((await stat(dir)).nlink, 4, 'after one rmdir: 4')
})
