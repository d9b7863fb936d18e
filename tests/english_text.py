"""A fixed English text for perplexity tests: original prose written for pyphi's tests (no
license attached to anyone else), plain modern English on everyday topics, 2,080 tokens
with SmolLM2's tokenizer. Do not edit: measured perplexities refer to this exact text."""

TEXT = """\
The Lighthouse Keeper's Notebook

For most of the nineteenth century, the lighthouse on the northern point was kept by one family. \
The father trimmed the wicks, the mother kept the log, and the children learned to read the \
weather before they learned to read books. Every evening at sunset the lamp was lit, and every \
morning at sunrise it was put out, cleaned and covered with a linen cloth so that the sun would \
not crack the great glass lens. Nothing about the work was difficult, but none of it could be \
skipped. A light that failed for a single night could cost a ship, and a ship could cost a town.

The log survives in the county archive. It is a thick book with a cracked leather spine, and its \
pages are filled with short entries in a careful hand. Most of them say almost nothing: the time \
the lamp was lit, the direction of the wind, the state of the sea, and the number of vessels seen \
passing. Read one after another, however, they tell a story. In the winter months the entries \
grow longer. Storms are described in detail, with the height of the waves and the sound they made \
against the rocks. Supplies run low. The boat from the mainland cannot land for eleven days, and \
the family lives on salted fish, potatoes and tea without milk.

People who visit the archive often ask why anyone would choose such a life. The answer, as far as \
the notebook can give one, is that the keepers did not think of it as a choice. The post was \
handed from parent to child, like a farm or a shop. It came with a house, a small salary and a \
clear sense of purpose. The sea was dangerous, the ships needed the light, and somebody had to \
keep it burning. When the eldest son left to work on the railways, his younger sister took his \
place, and the entries continue in her rounder, faster handwriting without a single missed night.

How Bread Is Made

Bread is one of the oldest prepared foods, and the basic method has changed very little in \
thousands of years. Flour is mixed with water and a little salt. Yeast, which is a living \
organism, is added to the dough. As the yeast feeds on the sugars in the flour, it releases \
carbon dioxide, and the gas is trapped by a stretchy network of proteins called gluten. This is \
what makes the dough rise. Kneading the dough helps the gluten to develop, which is why bakers \
push, fold and turn it for several minutes before leaving it to rest.

After the first rise, the dough is knocked back, shaped and left to rise a second time. It is \
then baked in a hot oven. In the first few minutes the heat makes the gas expand quickly, and the \
loaf grows in size. This is called oven spring. Later, the outside of the loaf dries and browns, \
forming the crust, while the inside sets into a soft crumb full of small holes. A good loaf sounds \
hollow when it is tapped on the bottom, and it should be left to cool before it is cut, because \
the crumb is still cooking from the inside.

Many home bakers prefer to use a sourdough starter instead of dried yeast. A starter is simply a \
mixture of flour and water that has been left to collect wild yeast and bacteria from the air and \
from the flour itself. It must be fed every day with fresh flour and water, and it can be kept \
alive for years. Bread made with a starter takes longer to rise, but it has a deeper flavour and \
a slightly sour taste, and it usually stays fresh for longer than bread made with commercial yeast.

A Short Guide to the Weather

The weather is the state of the atmosphere at a particular place and time. It includes the \
temperature, the amount of moisture in the air, the speed and direction of the wind, and whether \
it is raining, snowing or clear. Climate, on the other hand, describes the average weather of a \
region over many years. A single cold week tells us about the weather; thirty years of records \
tell us about the climate.

Most of the weather we experience is driven by the sun. The sun heats the surface of the Earth \
unevenly. The tropics receive more energy than the poles, land warms faster than water, and dark \
surfaces absorb more heat than light ones. Warm air is lighter than cold air, so it rises, and \
cooler air moves in to take its place. This movement of air is what we feel as wind. On a larger \
scale, the same process creates the great belts of wind that circle the planet and carry storms \
from one ocean to another.

Clouds form when warm, moist air rises and cools. Cool air cannot hold as much water vapour as \
warm air, so some of the vapour condenses into tiny droplets around specks of dust or salt. When \
enough droplets join together and become heavy, they fall as rain. If the air is cold enough, \
the water freezes into ice crystals, which may reach the ground as snow. Thunderstorms develop \
when air rises very quickly, building tall clouds in which ice and water collide and separate \
electric charges. Lightning is the sudden release of that charge, and thunder is the sound of the \
air expanding as it is heated by the flash.

Forecasters use observations from weather stations, balloons, ships, aircraft and satellites to \
describe the current state of the atmosphere. They then feed these measurements into computer \
models that calculate how the air is likely to move and change over the following hours and \
days. Forecasts for the next day or two are usually accurate, while forecasts for more than a \
week ahead remain uncertain, because small errors in the starting measurements grow larger as \
time passes.

Learning a Musical Instrument

Anyone who has tried to learn a musical instrument as an adult knows that progress can feel \
painfully slow. The fingers do not go where they are told, the notes sound thin, and simple \
pieces that children play with ease seem impossible. Teachers often say that the secret is not \
talent but routine. Twenty minutes of practice every day is worth far more than three hours once \
a week, because the brain and the hands learn through repetition and rest.

Good practice is also focused. Instead of playing a whole piece from beginning to end, a student \
should find the two or three bars that cause the most trouble and work on them slowly, with a \
metronome, until they are clean. Only then should the tempo be raised, a little at a time. It is \
tempting to skip this stage and play everything at full speed, but mistakes that are repeated \
become habits, and habits are hard to break.

Finally, it helps to listen. Recordings of good musicians show what a piece can sound like, and \
recordings of one's own playing reveal problems that are easy to miss while concentrating on the \
notes. Many learners are surprised by how different they sound on a recording. The first \
reaction is often disappointment, but the recording is also a measure of progress. Played back a \
few months later, it shows how far the player has come.

The Village Market

Every Saturday morning the square in front of the old church fills with stalls. Farmers arrive \
before dawn with crates of vegetables, baskets of eggs and buckets of cut flowers. A baker sets \
out loaves and pastries on a long wooden table, and a cheesemaker from the hills unwraps wheels \
of cheese that he has aged in a cellar beneath his barn. By eight o'clock the first customers are \
walking between the stalls with cloth bags, comparing prices and talking with the sellers.

The market is older than anyone in the village can remember. Records from the town hall show \
that a weekly market was held in the square at least four hundred years ago, and some historians \
believe it is much older than that. The goods have changed over time. Wool and livestock were \
once the most important trades, and the square was crowded with sheep and cattle. Today the \
animals are gone, but the rhythm of the day is much the same: an early rush, a quiet hour in the \
middle of the morning, and a final burst of business just before noon, when the sellers lower \
their prices rather than carry their goods home again.

For many people in the village the market is less about shopping than about meeting. Neighbours \
who rarely see each other during the week stop to talk about the harvest, the weather and the \
news. Children run between the stalls, and older residents sit on the benches by the fountain, \
watching the crowd. When the last stall is packed away and the square is swept clean, the village \
seems suddenly empty, as if it were waiting for the next Saturday to come.

Why We Sleep

Scientists still do not fully understand why humans and other animals need to sleep, but they \
know a great deal about what happens when we do not. After a single night without sleep, people \
find it harder to concentrate, remember new information and control their emotions. After \
several nights, their reactions slow down so much that driving a car becomes as dangerous as \
driving after drinking alcohol. Over months and years, a lack of sleep is linked to a higher risk \
of heart disease, diabetes and depression.

During sleep, the brain is far from idle. It moves through several stages, each with its own \
pattern of electrical activity. In deep sleep, the body repairs tissues and releases hormones \
that help growth. In the stage known as rapid eye movement sleep, the brain becomes very active \
and most vivid dreams take place. Many researchers believe that these stages work together to \
sort and store the memories of the day, keeping what is useful and letting the rest fade away.

Adults generally need between seven and nine hours of sleep each night, while teenagers need \
more. Simple habits can make a large difference: going to bed and getting up at the same time \
every day, keeping the bedroom dark and cool, and avoiding screens and heavy meals late in the \
evening. Perhaps the most useful advice is also the simplest. When the body says that it is \
tired, it is usually right, and the best thing to do is to listen to it and go to bed.
"""
